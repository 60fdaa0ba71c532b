//! Certificates for TLS tests: a private CA and a server certificate for `127.0.0.1` (and
//! `localhost`) signed by it, P-256 keys, valid two days, made with the `openssl` command-line
//! tool in a temporary directory that is removed on drop (however the test ends).
//!
//! [`Certificates::make`] returns `None` when `openssl` is not installed; the caller applies the
//! [`skip`](crate::skip) rule, naming its test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A CA (`ca.pem`, `ca.key`) and a server certificate signed by it (`server.pem`,
/// `server.key`) in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// Makes the CA and the server certificate; `None` when `openssl` is not installed.
    pub fn make() -> Option<Certificates> {
        let certificates = Certificates {
            dir: crate::temp_dir("ae-tls"),
        };
        let dir = &certificates.dir;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=async-endpoint test CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(dir, &ca)?;
        let mut csr = vec!["req", "-new", "-subj", "/CN=127.0.0.1"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(dir, &csr)?;
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write ext.cnf");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
        )?;
        Some(certificates)
    }

    /// The path of one of the files (`ca.pem`, `server.pem`, `server.key`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate (PEM), for a client's trusted roots.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.pem")).expect("read ca.pem")
    }

    /// `redis-server` arguments serving TLS on `tls_port` with the server certificate, without
    /// requiring client certificates (as managed Redis offerings do).
    pub fn redis_server_args(&self, tls_port: u16) -> Vec<String> {
        let path = |name: &str| self.path(name).to_string_lossy().into_owned();
        vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            path("server.pem"),
            "--tls-key-file".to_owned(),
            path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            path("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `openssl` in `dir`; `None` when it is not installed.
fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) => {
            assert!(status.success(), "openssl {args:?} failed");
            Some(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("openssl: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_and_removed() {
        let Some(certificates) = Certificates::make() else {
            crate::skip("TLS certificates", "openssl not found on PATH");
            return;
        };
        let dir = certificates.dir().to_owned();
        for name in ["ca.pem", "server.pem", "server.key"] {
            assert!(certificates.path(name).is_file(), "{name} was made");
        }
        assert!(
            String::from_utf8(certificates.ca_pem())
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        drop(certificates);
        assert!(!dir.exists(), "the directory is removed on drop");
    }
}
