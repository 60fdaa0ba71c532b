-- async-endpoint PostgreSQL backend, schema version 1.
-- `{schema}` is replaced by the configured schema (a validated, quoted identifier) and
-- `{lock}` by a per-schema prefix for advisory-lock keys.
--
-- One table holds each request and its job: a start is one INSERT, a poll one read by primary
-- key, and begin/finish update one row (no join, no second table to keep in step). The queue is
-- the partial index `requests_queue` over rows whose job is open, so finished requests cost the
-- queue nothing.

CREATE TABLE {schema}.requests (
    id              text PRIMARY KEY,
    task            text NOT NULL,
    -- 0 queued, 1 running, 2 retrying, 3 done, 4 failed
    status          smallint NOT NULL DEFAULT 0,
    attempt         integer NOT NULL DEFAULT 0,
    params          text,
    progress        text,
    output          text,
    failure         text,
    created_ms      bigint NOT NULL,
    deadline_ms     bigint NOT NULL,
    ttl_ms          bigint NOT NULL,
    -- gone for readers from here on; the sweeper deletes it in bounded batches
    expires_ms      bigint NOT NULL,
    -- the job: open until a worker finishes or skips it; fetchable from `available_ms` (a
    -- lease moves it forward; a heartbeat keeps moving it while the worker lives)
    job_open        boolean NOT NULL DEFAULT true,
    available_ms    bigint NOT NULL,
    deliveries      integer NOT NULL DEFAULT 0,
    -- pending limits: set only by starts that carried the limit, cleared once terminal
    limit_owner     text,
    limit_task      boolean NOT NULL DEFAULT false,
    -- idempotency key (digest of task, owner and key), the params' digest, and its expiry
    idem_key        text,
    idem_digest     text,
    idem_expires_ms bigint,
    -- the start's W3C traceparent, handed to every attempt
    traceparent     text
) WITH (fillfactor = 80);

CREATE UNIQUE INDEX requests_idem ON {schema}.requests (idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX requests_queue ON {schema}.requests (available_ms) WHERE job_open;
CREATE INDEX requests_expiry ON {schema}.requests (expires_ms);
CREATE INDEX requests_pending_owner ON {schema}.requests (limit_owner, deadline_ms)
    WHERE limit_owner IS NOT NULL;
CREATE INDEX requests_pending_task ON {schema}.requests (task, deadline_ms) WHERE limit_task;

-- The server's clock in unix milliseconds, for leases (every process judges them by one clock).
-- Stable (the statement's start), so index scans can use it.
CREATE FUNCTION {schema}.now_ms() RETURNS bigint LANGUAGE sql STABLE AS
$$ SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint $$;

-- Stores a request and opens its job, unless its idempotency key names a live earlier request
-- (outcome 1) or a pending limit is reached (2 owner, 3 task). Starts that carry a limit take
-- an advisory transaction lock per owner and per task first (always owner, then task), so the
-- key check, the count and the insert are one step for everyone who could interfere.
CREATE FUNCTION {schema}.create_request(
    p_id text, p_task text, p_params text, p_created bigint, p_deadline bigint, p_ttl bigint,
    p_owner_limit integer, p_owner text, p_task_limit integer, p_key text, p_digest text,
    p_channel text, p_traceparent text)
RETURNS TABLE (outcome smallint, existing_id text, existing_created bigint, existing_digest text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    e record;
    n integer;
BEGIN
    IF p_owner_limit IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('{lock}:o:' || p_owner, 0));
    END IF;
    IF p_task_limit IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('{lock}:t:' || p_task, 0));
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT r.id, r.created_ms, r.idem_digest, r.idem_expires_ms INTO e
            FROM {schema}.requests r WHERE r.idem_key = p_key;
        IF FOUND THEN
            IF e.idem_expires_ms > p_created THEN
                RETURN QUERY SELECT 1::smallint, e.id, e.created_ms, e.idem_digest;
                RETURN;
            END IF;
            -- The key outlived its TTL: free it for this start.
            UPDATE {schema}.requests SET idem_key = NULL WHERE id = e.id;
        END IF;
    END IF;
    IF p_owner_limit IS NOT NULL THEN
        SELECT count(*) INTO n FROM (
            SELECT 1 FROM {schema}.requests
            WHERE limit_owner = p_owner AND deadline_ms >= p_created AND expires_ms > p_created
            LIMIT p_owner_limit) pending;
        IF n >= p_owner_limit THEN
            RETURN QUERY SELECT 2::smallint, NULL::text, NULL::bigint, NULL::text;
            RETURN;
        END IF;
    END IF;
    IF p_task_limit IS NOT NULL THEN
        SELECT count(*) INTO n FROM (
            SELECT 1 FROM {schema}.requests
            WHERE task = p_task AND limit_task AND deadline_ms >= p_created
                AND expires_ms > p_created
            LIMIT p_task_limit) pending;
        IF n >= p_task_limit THEN
            RETURN QUERY SELECT 3::smallint, NULL::text, NULL::bigint, NULL::text;
            RETURN;
        END IF;
    END IF;
    INSERT INTO {schema}.requests (id, task, params, created_ms, deadline_ms, ttl_ms, expires_ms,
            available_ms, limit_owner, limit_task, idem_key, idem_digest, idem_expires_ms,
            traceparent)
        VALUES (p_id, p_task, p_params, p_created, p_deadline, p_ttl, p_created + p_ttl,
            {schema}.now_ms(), CASE WHEN p_owner_limit IS NOT NULL THEN p_owner END,
            p_task_limit IS NOT NULL, p_key, p_digest,
            CASE WHEN p_key IS NOT NULL THEN p_created + p_ttl END, p_traceparent)
        ON CONFLICT (idem_key) WHERE idem_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        -- A concurrent start with the same key committed first: this is a repeat of it.
        SELECT r.id, r.created_ms, r.idem_digest INTO e
            FROM {schema}.requests r WHERE r.idem_key = p_key;
        RETURN QUERY SELECT 1::smallint, e.id, e.created_ms, e.idem_digest;
        RETURN;
    END IF;
    PERFORM pg_notify(p_channel, 'q ' || p_task);
    RETURN QUERY SELECT 0::smallint, NULL::text, NULL::bigint, NULL::text;
END $$;

-- Makes a live, unfinished request terminal: the one place a row becomes done or failed. Drops
-- its params, frees its pending slots, refreshes its TTL and tells watchers. An open job stays
-- open: the worker that fetches it skips it, and finishing or skipping closes it.
CREATE FUNCTION {schema}.settle(p_id text, p_now bigint, p_status smallint, p_output text,
    p_failure text, p_channel text)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE {schema}.requests SET status = p_status, output = p_output, failure = p_failure,
            params = NULL, limit_owner = NULL, limit_task = false,
            expires_ms = p_now + ttl_ms
        WHERE id = p_id;
    PERFORM pg_notify(p_channel, 'r ' || p_id);
END $$;

-- Turns an unfinished request past its deadline into a timeout (a poll found it overdue), then
-- returns it as it stands. `changed` says whether this call wrote the timeout.
CREATE FUNCTION {schema}.expire(p_id text, p_now bigint, p_timeout text, p_channel text)
RETURNS TABLE (changed boolean, task text, status smallint, attempt integer, progress text,
    output text, failure text, deadline_ms bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT q.status, q.deadline_ms INTO r FROM {schema}.requests q
        WHERE q.id = p_id AND q.expires_ms > p_now FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    changed := r.status < 3 AND p_now > r.deadline_ms;
    IF changed THEN
        PERFORM {schema}.settle(p_id, p_now, 4::smallint, NULL, p_timeout, p_channel);
    END IF;
    RETURN QUERY SELECT changed, q.task, q.status, q.attempt, q.progress, q.output, q.failure,
            q.deadline_ms
        FROM {schema}.requests q WHERE q.id = p_id;
END $$;

-- Cancels an unfinished request (a timeout instead when past its deadline) and returns it as it
-- stands; a terminal one is returned unchanged.
CREATE FUNCTION {schema}.cancel(p_id text, p_now bigint, p_timeout text, p_cancelled text,
    p_channel text)
RETURNS TABLE (changed boolean, task text, status smallint, attempt integer, progress text,
    output text, failure text, deadline_ms bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT q.status, q.deadline_ms INTO r FROM {schema}.requests q
        WHERE q.id = p_id AND q.expires_ms > p_now FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    changed := r.status < 3;
    IF changed THEN
        PERFORM {schema}.settle(p_id, p_now, 4::smallint, NULL,
            CASE WHEN p_now > r.deadline_ms THEN p_timeout ELSE p_cancelled END, p_channel);
    END IF;
    RETURN QUERY SELECT changed, q.task, q.status, q.attempt, q.progress, q.output, q.failure,
            q.deadline_ms
        FROM {schema}.requests q WHERE q.id = p_id;
END $$;

-- Starts an attempt of a delivered job: code 0 with the attempt to run, or why not (the job is
-- closed then): 1 gone or terminal, 2 deadline passed (now a timeout), 3 delivered more than
-- `p_max` times (now an internal failure).
CREATE FUNCTION {schema}.begin_job(p_id text, p_now bigint, p_deliveries integer,
    p_max integer, p_timeout text, p_poison text, p_channel text)
RETURNS TABLE (code smallint, attempt integer, params text, deadline_ms bigint,
    traceparent text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT q.status, q.deadline_ms INTO r FROM {schema}.requests q
        WHERE q.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 1::smallint, 0, NULL::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    IF r.status >= 3 OR NOT EXISTS (
            SELECT 1 FROM {schema}.requests q WHERE q.id = p_id AND q.expires_ms > p_now) THEN
        UPDATE {schema}.requests q SET job_open = false WHERE q.id = p_id AND q.job_open;
        RETURN QUERY SELECT 1::smallint, 0, NULL::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    IF p_now > r.deadline_ms THEN
        PERFORM {schema}.settle(p_id, p_now, 4::smallint, NULL, p_timeout, p_channel);
        UPDATE {schema}.requests q SET job_open = false WHERE q.id = p_id;
        RETURN QUERY SELECT 2::smallint, 0, NULL::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    IF p_deliveries > p_max THEN
        PERFORM {schema}.settle(p_id, p_now, 4::smallint, NULL, p_poison, p_channel);
        UPDATE {schema}.requests q SET job_open = false WHERE q.id = p_id;
        RETURN QUERY SELECT 3::smallint, 0, NULL::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    PERFORM pg_notify(p_channel, 'r ' || p_id);
    RETURN QUERY UPDATE {schema}.requests q SET status = 1, attempt = q.attempt + 1,
            expires_ms = p_now + q.ttl_ms
        WHERE q.id = p_id
        RETURNING 0::smallint, q.attempt, COALESCE(q.params, ''), q.deadline_ms, q.traceparent;
END $$;

-- Writes an attempt's outcome unless the request is terminal (the first terminal state wins;
-- past the deadline it becomes the timeout), closes the job, returns the status that stands.
CREATE FUNCTION {schema}.finish_job(p_id text, p_now bigint, p_status smallint, p_value text,
    p_timeout text, p_channel text)
RETURNS smallint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    SELECT q.status, q.deadline_ms, q.expires_ms INTO r FROM {schema}.requests q
        WHERE q.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 4::smallint;
    END IF;
    UPDATE {schema}.requests q SET job_open = false WHERE q.id = p_id AND q.job_open;
    IF r.status >= 3 OR r.expires_ms <= p_now THEN
        RETURN CASE WHEN r.expires_ms <= p_now THEN 4::smallint ELSE r.status END;
    END IF;
    IF p_now > r.deadline_ms THEN
        PERFORM {schema}.settle(p_id, p_now, 4::smallint, NULL, p_timeout, p_channel);
        RETURN 4::smallint;
    END IF;
    IF p_status = 3 THEN
        PERFORM {schema}.settle(p_id, p_now, 3::smallint, p_value, NULL, p_channel);
    ELSE
        PERFORM {schema}.settle(p_id, p_now, 4::smallint, NULL, p_value, p_channel);
    END IF;
    RETURN p_status;
END $$;
