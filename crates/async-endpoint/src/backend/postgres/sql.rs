//! The PostgreSQL backend's statements, with the schema filled in once per backend: prepared
//! (and cached per connection) by the client. The atomic transitions that need several steps
//! are PL/pgSQL functions in the migrations; the worker's hot path is plain statements here.

/// The statements, with the schema filled in.
pub(super) struct Sql {
    /// The `NOTIFY` channel: `r <id>` for a watched request's change, `q <task>` for a new job.
    pub(super) channel: String,
    /// A poll: the request by primary key, with whether it is marked watched.
    pub(super) poll: String,
    /// Marks a request watched (later writes announce it) and returns it.
    pub(super) mark: String,
    /// Calls `expire`: an unfinished request past its deadline becomes a timeout.
    pub(super) expire: String,
    /// Calls `create_request`: a start with an idempotency key or a pending limit.
    pub(super) create: String,
    /// A plain start: the `INSERT` and its `NOTIFY`.
    pub(super) insert: String,
    /// Leases and begins a batch of jobs (`FOR UPDATE SKIP LOCKED`).
    pub(super) fetch: String,
    /// Begins jobs this process did not fetch.
    pub(super) begin: String,
    /// Reads again jobs the fetch began whose requests may have changed since.
    pub(super) recheck: String,
    /// Writes a batch of outcomes.
    pub(super) finish: String,
    /// Counts a task's fetchable jobs.
    pub(super) queue_depth: String,
    /// Calls `cancel`.
    pub(super) cancel: String,
    /// Writes a running request's progress.
    pub(super) progress: String,
    /// Marks a running request `retrying`.
    pub(super) retrying: String,
    /// Hands a job back to the queue.
    pub(super) release: String,
    /// Extends the leases of this process's running jobs.
    pub(super) heartbeat: String,
    /// Deletes a bounded batch of expired rows.
    pub(super) sweep: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Sql {
        let s = schema;
        let snapshot = "task, status, attempt, progress, output, failure, deadline_ms";
        Sql {
            channel: format!("{s}_changes"),
            poll: format!(
                "SELECT {snapshot}, watched FROM {s}.requests WHERE id = $1 AND expires_ms > $2"
            ),
            mark: format!(
                "UPDATE {s}.requests SET watched = true WHERE id = $1 AND expires_ms > $2 \
                 RETURNING {snapshot}"
            ),
            expire: format!("SELECT changed, {snapshot} FROM {s}.expire($1, $2, $3, $4)"),
            // A start with no idempotency key and no pending limit has nothing to check first:
            // one INSERT and its NOTIFY, without a PL/pgSQL call (`create_request` for the rest).
            insert: format!(
                "WITH added AS (INSERT INTO {s}.requests (id, task, params, created_ms, \
                     deadline_ms, ttl_ms, expires_ms, available_ms, traceparent) \
                     VALUES ($1, $2, $3, $4::int8, $5, $6::int8, $4 + $6, {s}.now_ms(), $7) RETURNING task) \
                 SELECT pg_notify($8, 'q ' || task) FROM added"
            ),
            create: format!(
                "SELECT outcome, existing_id, existing_created, existing_digest \
                 FROM {s}.create_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ),
            fetch: {
                let begin = Begin::new(s, "q.deliveries + 1", "$4", "$5", "$6", "$7", "$8");
                format!(
                    "UPDATE {s}.requests q SET \
                         available_ms = {s}.now_ms() + $3, deliveries = q.deliveries + 1, {set} \
                     FROM (SELECT id, status AS was FROM {s}.requests \
                           WHERE job_open AND available_ms <= {s}.now_ms() AND task = ANY($1) \
                           ORDER BY available_ms LIMIT $2 FOR UPDATE SKIP LOCKED) picked \
                     WHERE q.id = picked.id \
                     RETURNING q.id, q.task, q.deliveries, {code}, \
                         q.attempt, coalesce(q.params, ''), q.deadline_ms, q.traceparent, \
                         {told}, picked.was",
                    set = begin.set,
                    code = begin.code,
                    told = begin.told,
                )
            },
            // Jobs this process did not fetch: the same begin, over arrays ($1 ids, $2 their
            // deliveries), no id twice; answered in order. (`begin_jobs`, the function that did
            // this, stays for processes of the previous version.)
            begin: {
                let begin = Begin::new(s, "u.delivery", "$3", "$4", "$5", "$6", "$7");
                format!(
                    "WITH u AS (SELECT * FROM unnest($1::text[], $2::int4[]) \
                         WITH ORDINALITY AS u(id, delivery, ord)), \
                     written AS (UPDATE {s}.requests q SET {set} \
                       FROM u WHERE q.id = u.id AND q.id = ANY($1) \
                         AND (q.job_open OR NOT (q.status >= 3 OR q.expires_ms <= $3)) \
                       RETURNING q.id, q.attempt, q.params, q.deadline_ms, q.traceparent, \
                         {code} AS code, {told} AS told) \
                     SELECT coalesce(w.code, 1::smallint), w.attempt, coalesce(w.params, ''), \
                         w.deadline_ms, w.traceparent \
                     FROM u LEFT JOIN written w ON w.id = u.id ORDER BY u.ord",
                    set = begin.set,
                    code = begin.code,
                    told = begin.told,
                )
            },
            recheck: {
                // A job begun by its fetch, touched since: it runs if its request is as the
                // fetch left it (live, unfinished, before its deadline, this delivery's job
                // open); past its deadline it becomes a timeout; else it is skipped. Codes as a
                // begin's. Only what must change is written.
                let live = "q.status < 3 AND q.expires_ms > $3";
                format!(
                    "WITH u AS (SELECT * FROM unnest($1::text[], $2::int4[]) \
                         WITH ORDINALITY AS u(id, delivery, ord)), \
                     written AS (UPDATE {s}.requests q SET \
                         status = CASE WHEN {live} THEN 4 ELSE q.status END, \
                         output = CASE WHEN {live} THEN NULL ELSE q.output END, \
                         failure = CASE WHEN {live} THEN $4 ELSE q.failure END, \
                         params = CASE WHEN {live} THEN NULL ELSE q.params END, \
                         limit_owner = CASE WHEN {live} THEN NULL ELSE q.limit_owner END, \
                         limit_task = CASE WHEN {live} THEN false ELSE q.limit_task END, \
                         expires_ms = CASE WHEN {live} THEN $3 + q.ttl_ms ELSE q.expires_ms END, \
                         job_open = false \
                       FROM u WHERE q.id = u.id AND q.id = ANY($1) AND q.deliveries = u.delivery \
                         AND q.job_open AND NOT ({live} AND $3 <= q.deadline_ms) \
                       RETURNING q.id, \
                         (CASE WHEN q.status = 4 AND q.expires_ms = $3 + q.ttl_ms \
                             AND q.failure = $4 THEN 2 ELSE 1 END)::smallint AS code, \
                         CASE WHEN q.watched AND q.status = 4 AND q.expires_ms = $3 + q.ttl_ms \
                             AND q.failure = $4 THEN {s}.announce($5, q.id) END AS told) \
                     SELECT (CASE WHEN w.code IS NOT NULL THEN w.code \
                             WHEN r.id IS NOT NULL THEN 0 ELSE 1 END)::smallint \
                     FROM u LEFT JOIN written w ON w.id = u.id \
                     LEFT JOIN {s}.requests r ON r.id = u.id AND r.deliveries = u.delivery \
                         AND r.job_open AND r.status < 3 AND r.expires_ms > $3 \
                         AND $3 <= r.deadline_ms \
                     ORDER BY u.ord"
                )
            },
            finish: {
                // Live and unfinished (anything else is only closed).
                let open = "q.expires_ms > $4 AND q.status < 3";
                format!(
                    "WITH u AS (SELECT * FROM unnest($1::text[], $2::int2[], $3::text[])                          WITH ORDINALITY AS u(id, code, value, ord)),                      written AS (UPDATE {s}.requests q SET                          status = CASE WHEN NOT ({open}) THEN q.status                              WHEN $4 > q.deadline_ms THEN 4 ELSE u.code END,                          output = CASE WHEN NOT ({open}) THEN q.output                              WHEN $4 <= q.deadline_ms AND u.code = 3 THEN u.value END,                          failure = CASE WHEN NOT ({open}) THEN q.failure                              WHEN $4 > q.deadline_ms THEN $5 WHEN u.code = 4 THEN u.value END,                          params = CASE WHEN {open} THEN NULL ELSE q.params END,                          limit_owner = CASE WHEN {open} THEN NULL ELSE q.limit_owner END,                          limit_task = CASE WHEN {open} THEN false ELSE q.limit_task END,                          expires_ms = CASE WHEN {open} THEN $4 + q.ttl_ms ELSE q.expires_ms END,                          job_open = false                        FROM u WHERE q.id = u.id AND q.id = ANY($1)                        RETURNING q.id,                          (CASE WHEN q.expires_ms <= $4 THEN 4 ELSE q.status END)::smallint AS stands,                          CASE WHEN q.watched AND q.expires_ms = $4 + q.ttl_ms                              THEN {s}.announce($6, q.id) END AS told)                      SELECT coalesce(w.stands, 4::smallint) FROM u LEFT JOIN written w ON w.id = u.id                      ORDER BY u.ord"
                )
            },
            queue_depth: format!(
                "SELECT count(*) FROM {s}.requests \
                 WHERE job_open AND task = $1 AND available_ms <= {s}.now_ms() \
                 AND expires_ms > $2"
            ),
            cancel: format!("SELECT changed, {snapshot} FROM {s}.cancel($1, $2, $3, $4, $5)"),
            progress: format!(
                "WITH changed AS (UPDATE {s}.requests SET progress = $2, \
                     expires_ms = $3 + ttl_ms \
                     WHERE id = $1 AND status IN (1, 2) AND expires_ms > $3 \
                     RETURNING id, watched) \
                 SELECT pg_notify($4, 'r ' || id) FROM changed WHERE watched"
            ),
            retrying: format!(
                "WITH changed AS (UPDATE {s}.requests SET status = 2, expires_ms = $2 + ttl_ms \
                     WHERE id = $1 AND status = 1 AND expires_ms > $2 \
                     RETURNING id, watched) \
                 SELECT pg_notify($3, 'r ' || id) FROM changed WHERE watched"
            ),
            release: {
                // Handing back a job that the fetch began and the worker never ran undoes the
                // begin ($4: the status before it, $5: the attempt it began; else NULL).
                let undo = "$4::smallint IS NOT NULL AND status = 1 AND attempt = $5";
                format!(
                    "WITH released AS (UPDATE {s}.requests \
                         SET available_ms = {s}.now_ms(), deliveries = greatest(deliveries - 1, 0), \
                             status = CASE WHEN {undo} THEN $4 ELSE status END, \
                             attempt = CASE WHEN {undo} THEN attempt - 1 ELSE attempt END \
                         WHERE id = $1 AND deliveries = $2 AND job_open RETURNING task) \
                     SELECT pg_notify($3, 'q ' || task) FROM released"
                )
            },
            heartbeat: format!(
                "UPDATE {s}.requests r SET available_ms = {s}.now_ms() + $3 \
                 FROM unnest($1::text[], $2::int4[]) AS h(id, delivery) \
                 WHERE r.id = h.id AND r.deliveries = h.delivery AND r.job_open"
            ),
            sweep: format!(
                "DELETE FROM {s}.requests WHERE id IN (SELECT id FROM {s}.requests \
                 WHERE expires_ms <= $1 ORDER BY expires_ms LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}

/// Starting an attempt of a job, in SQL over the row `q` as it stands once locked, for the
/// fetch and for jobs begun apart: 0 run it (running, attempt + 1), 1 skip it (gone or
/// terminal; the job is closed), 2 skip it and fail the request with a timeout (past its
/// deadline), 3 skip it and fail it as poison (delivered more than the maximum).
struct Begin {
    /// The `SET` list.
    set: String,
    /// The code, read back from what was written (for `RETURNING`).
    code: String,
    /// Announces a watched request whose status changed (for `RETURNING`).
    told: String,
}

impl Begin {
    /// With the SQL for the delivery count, now (unix ms), the most deliveries, the timeout and
    /// poison failures' JSON, and the channel.
    fn new(
        s: &str,
        delivery: &str,
        now: &str,
        max: &str,
        timeout: &str,
        poison: &str,
        channel: &str,
    ) -> Begin {
        let code = format!(
            "{s}.begin_code(q.status, q.expires_ms, q.deadline_ms, {delivery}, {now}, {max})"
        );
        Begin {
            set: format!(
                "status = CASE {code} WHEN 0 THEN 1 WHEN 1 THEN q.status ELSE 4 END, \
                 attempt = CASE {code} WHEN 0 THEN q.attempt + 1 ELSE q.attempt END, \
                 output = CASE WHEN {code} >= 2 THEN NULL ELSE q.output END, \
                 failure = CASE {code} WHEN 2 THEN {timeout} WHEN 3 THEN {poison} \
                     ELSE q.failure END, \
                 params = CASE WHEN {code} >= 2 THEN NULL ELSE q.params END, \
                 limit_owner = CASE WHEN {code} >= 2 THEN NULL ELSE q.limit_owner END, \
                 limit_task = CASE WHEN {code} >= 2 THEN false ELSE q.limit_task END, \
                 expires_ms = CASE {code} WHEN 1 THEN q.expires_ms \
                     WHEN 0 THEN CASE WHEN q.expires_ms > q.deadline_ms THEN q.expires_ms \
                         ELSE {now} + q.ttl_ms END \
                     ELSE {now} + q.ttl_ms END, \
                 job_open = q.job_open AND {code} = 0"
            ),
            code: format!(
                "(CASE WHEN q.status = 1 AND q.expires_ms > {now} THEN 0 \
                     WHEN q.status = 4 AND q.expires_ms = {now} + q.ttl_ms \
                         AND q.failure = {timeout} THEN 2 \
                     WHEN q.status = 4 AND q.expires_ms = {now} + q.ttl_ms \
                         AND q.failure = {poison} THEN 3 \
                     ELSE 1 END)::smallint"
            ),
            told: format!(
                "CASE WHEN q.watched AND q.expires_ms > {now} AND (q.status = 1 \
                     OR q.expires_ms = {now} + q.ttl_ms AND q.failure IN ({timeout}, {poison})) \
                     THEN {s}.announce({channel}, q.id) END"
            ),
        }
    }
}
