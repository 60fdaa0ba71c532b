-- async-endpoint PostgreSQL backend, schema version 2: batched begin and finish (one statement
-- per fetched batch / per gathered set of outcomes), and `r <id>` notifications only for
-- requests somebody watches.
--
-- `pg_notify` makes every notifying transaction take one database-wide lock while it commits,
-- so a notification per begin, finish and progress serialized the workers' commits. Now a
-- request is announced only once a poll marked it `watched` (a poll does when its process
-- watches the request: waiting polls and event streams watch before they poll), except that a
-- cancel is always announced (a worker watches its job before it begins, without polling).

ALTER TABLE {schema}.requests ADD COLUMN watched boolean NOT NULL DEFAULT false;

-- As in version 1, but tells only watchers that marked the request.
CREATE OR REPLACE FUNCTION {schema}.settle(p_id text, p_now bigint, p_status smallint,
    p_output text, p_failure text, p_channel text)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_watched boolean;
BEGIN
    UPDATE {schema}.requests SET status = p_status, output = p_output, failure = p_failure,
            params = NULL, limit_owner = NULL, limit_task = false,
            expires_ms = p_now + ttl_ms
        WHERE id = p_id
        RETURNING watched INTO v_watched;
    IF v_watched THEN
        PERFORM pg_notify(p_channel, 'r ' || p_id);
    END IF;
END $$;

-- As in version 1, but a cancel is always announced (whether or not the request was marked).
CREATE OR REPLACE FUNCTION {schema}.cancel(p_id text, p_now bigint, p_timeout text,
    p_cancelled text, p_channel text)
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
        -- (A second notification of one payload in one transaction is folded into one.)
        PERFORM pg_notify(p_channel, 'r ' || p_id);
    END IF;
    RETURN QUERY SELECT changed, q.task, q.status, q.attempt, q.progress, q.output, q.failure,
            q.deadline_ms
        FROM {schema}.requests q WHERE q.id = p_id;
END $$;

-- Replaced by the batched forms below (a single job is a batch of one).
DROP FUNCTION {schema}.begin_job(text, bigint, integer, integer, text, text, text);
DROP FUNCTION {schema}.finish_job(text, bigint, smallint, text, text, text);

-- Announces a change of request `p_id` (for use inside statements); true.
CREATE FUNCTION {schema}.announce(p_channel text, p_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(p_channel, 'r ' || p_id);
    RETURN true;
END $$;

-- What starting an attempt of a job does to its request as it stands: 0 run it, 1 skip it (gone
-- or terminal), 2 skip it and fail the request with a timeout (past its deadline), 3 skip it
-- and fail it as poison (delivered more than `p_max` times). Inlined where it is used.
CREATE FUNCTION {schema}.begin_code(p_status smallint, p_expires bigint, p_deadline bigint,
    p_delivery integer, p_now bigint, p_max integer)
RETURNS smallint LANGUAGE sql IMMUTABLE AS $$
    SELECT (CASE
        WHEN p_status >= 3 OR p_expires <= p_now THEN 1
        WHEN p_now > p_deadline THEN 2
        WHEN p_delivery > p_max THEN 3
        ELSE 0 END)::smallint
$$;

-- Starts attempts of delivered jobs, as one begin per job in the arrays' order would: a row per
-- job, in order, with code 0 and the attempt to run, or why not (the job is closed then):
-- 1 gone or terminal, 2 deadline passed (now a timeout), 3 delivered more than `p_max` times
-- (now an internal failure). `p_deliveries[i]` is the delivery count of job `p_ids[i]`.
--
-- One statement. Its rows are locked in the order its plan visits them (the caller sends the
-- ids sorted; the table is read by id or by place), the same for every batch, so two batches
-- (say, a job redelivered while its first worker still runs it) hardly ever wait on each other
-- in a cycle; should they, PostgreSQL ends one as a deadlock and its worker hands that batch
-- back. Ids repeated in one batch are begun one after the other. The caller bounds the batch.
CREATE FUNCTION {schema}.begin_jobs(p_ids text[], p_deliveries integer[], p_now bigint,
    p_max integer, p_timeout text, p_poison text, p_channel text)
RETURNS TABLE (code smallint, attempt integer, params text, deadline_ms bigint,
    traceparent text)
LANGUAGE plpgsql
-- By primary key, whatever the planner thinks of a young table's size (with a seq scan, a
-- batch would cost a scan of the whole table), and joined by hash (it takes a batch for a row
-- or two, and a nested loop would compare every job with every other).
SET enable_seqscan = off
SET enable_nestloop = off
AS $$
#variable_conflict use_column
BEGIN
    IF cardinality(p_ids) IS DISTINCT FROM cardinality(p_deliveries) THEN
        RAISE EXCEPTION 'begin_jobs: % ids but % delivery counts',
            cardinality(p_ids), cardinality(p_deliveries);
    END IF;
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF (SELECT count(DISTINCT u.id) FROM unnest(p_ids) AS u(id)) < cardinality(p_ids) THEN
        FOR i IN 1 .. cardinality(p_ids) LOOP
            RETURN QUERY SELECT * FROM {schema}.begin_jobs(ARRAY[p_ids[i]],
                ARRAY[p_deliveries[i]], p_now, p_max, p_timeout, p_poison, p_channel);
        END LOOP;
        RETURN;
    END IF;
    -- One UPDATE judges each row as it stands once locked (in READ COMMITTED, a row changed
    -- meanwhile is judged again as changed): 0 running, attempt + 1; 1 the job closed; 2, 3
    -- settled as a failure (params dropped, pending slots freed, TTL refreshed), the job closed.
    -- A closed job of a terminal request is not written at all. The reply tells the codes apart
    -- by the values written: running with an expiry ahead is 0 (a request that is gone stays
    -- unchanged, with its expiry behind), a failure written now with the timeout or poison is 2
    -- or 3 (any other row is 1, a skip either way).
    RETURN QUERY
    WITH written AS (
        UPDATE {schema}.requests q SET
                status = CASE {schema}.begin_code(q.status, q.expires_ms, q.deadline_ms,
                        u.delivery, p_now, p_max)
                    WHEN 0 THEN 1 WHEN 1 THEN q.status ELSE 4 END,
                attempt = CASE {schema}.begin_code(q.status, q.expires_ms, q.deadline_ms,
                        u.delivery, p_now, p_max)
                    WHEN 0 THEN q.attempt + 1 ELSE q.attempt END,
                output = CASE WHEN {schema}.begin_code(q.status, q.expires_ms, q.deadline_ms,
                        u.delivery, p_now, p_max) >= 2 THEN NULL ELSE q.output END,
                failure = CASE {schema}.begin_code(q.status, q.expires_ms, q.deadline_ms,
                        u.delivery, p_now, p_max)
                    WHEN 2 THEN p_timeout WHEN 3 THEN p_poison ELSE q.failure END,
                params = CASE WHEN {schema}.begin_code(q.status, q.expires_ms, q.deadline_ms,
                        u.delivery, p_now, p_max) >= 2 THEN NULL ELSE q.params END,
                limit_owner = CASE WHEN {schema}.begin_code(q.status, q.expires_ms,
                        q.deadline_ms, u.delivery, p_now, p_max) >= 2
                    THEN NULL ELSE q.limit_owner END,
                limit_task = CASE WHEN {schema}.begin_code(q.status, q.expires_ms,
                        q.deadline_ms, u.delivery, p_now, p_max) >= 2
                    THEN false ELSE q.limit_task END,
                -- A record outlives its deadline from its start on (the TTL exceeds every
                -- deadline), and its finish or timeout refreshes the TTL: a running job's
                -- record cannot expire under it, so an attempt's start leaves the expiry be
                -- and the update touches no indexed column (a HOT update, no index writes).
                expires_ms = CASE {schema}.begin_code(q.status, q.expires_ms, q.deadline_ms,
                        u.delivery, p_now, p_max)
                    WHEN 1 THEN q.expires_ms
                    WHEN 0 THEN CASE WHEN q.expires_ms > q.deadline_ms THEN q.expires_ms
                        ELSE p_now + q.ttl_ms END
                    ELSE p_now + q.ttl_ms END,
                job_open = q.job_open AND {schema}.begin_code(q.status, q.expires_ms,
                    q.deadline_ms, u.delivery, p_now, p_max) = 0
            FROM unnest(p_ids, p_deliveries) AS u(id, delivery)
            WHERE q.id = u.id AND q.id = ANY (p_ids)
                AND (q.job_open OR NOT (q.status >= 3 OR q.expires_ms <= p_now))
            RETURNING q.id, q.attempt, q.params, q.deadline_ms, q.traceparent,
                (CASE WHEN q.status = 1 AND q.expires_ms > p_now THEN 0
                    WHEN q.status = 4 AND q.expires_ms = p_now + q.ttl_ms
                        AND q.failure = p_timeout THEN 2
                    WHEN q.status = 4 AND q.expires_ms = p_now + q.ttl_ms
                        AND q.failure = p_poison THEN 3
                    ELSE 1 END)::smallint AS code,
                CASE WHEN q.watched AND q.expires_ms > p_now AND (q.status = 1
                        OR q.expires_ms = p_now + q.ttl_ms AND q.failure IN (p_timeout, p_poison))
                    THEN {schema}.announce(p_channel, q.id) END AS told)
    SELECT coalesce(w.code, 1::smallint),
            CASE WHEN w.code = 0 THEN w.attempt ELSE 0 END,
            CASE WHEN w.code = 0 THEN coalesce(w.params, '') END,
            CASE WHEN w.code = 0 THEN w.deadline_ms ELSE 0 END,
            CASE WHEN w.code = 0 THEN w.traceparent END
        FROM unnest(p_ids) WITH ORDINALITY AS i(id, ord)
        LEFT JOIN written w ON w.id = i.id
        ORDER BY i.ord;
END $$;

-- Writes attempts' outcomes, as one finish per job in the arrays' order would: each unless its
-- request is terminal (the first terminal state wins; past the deadline it becomes the
-- timeout), closing every job; a row per job, in order, with the status that stands.
-- `p_codes[i]` is 3 (done: `p_values[i]` is the output) or 4 (failed: the failure).
-- One statement, ids sorted by the caller as for `begin_jobs`; repeated ids one after the other.
CREATE FUNCTION {schema}.finish_jobs(p_ids text[], p_codes smallint[], p_values text[],
    p_now bigint, p_timeout text, p_channel text)
RETURNS TABLE (stands smallint)
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_nestloop = off
AS $$
#variable_conflict use_column
BEGIN
    IF cardinality(p_ids) IS DISTINCT FROM cardinality(p_codes)
            OR cardinality(p_ids) IS DISTINCT FROM cardinality(p_values) THEN
        RAISE EXCEPTION 'finish_jobs: % ids, % codes, % values',
            cardinality(p_ids), cardinality(p_codes), cardinality(p_values);
    END IF;
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF (SELECT count(DISTINCT u.id) FROM unnest(p_ids) AS u(id)) < cardinality(p_ids) THEN
        FOR i IN 1 .. cardinality(p_ids) LOOP
            RETURN QUERY SELECT * FROM {schema}.finish_jobs(ARRAY[p_ids[i]],
                ARRAY[p_codes[i]], ARRAY[p_values[i]], p_now, p_timeout, p_channel);
        END LOOP;
        RETURN;
    END IF;
    -- One UPDATE judges each row as it stands once locked: it settles (the outcome, or the
    -- timeout past the deadline) unless terminal or gone, and closes the job either way. The
    -- status that stands is read from what was written (a row whose expiry is behind is gone:
    -- failed for the worker, as for everyone).
    RETURN QUERY
    WITH written AS (
        UPDATE {schema}.requests q SET
                status = CASE WHEN NOT (q.expires_ms > p_now AND q.status < 3) THEN q.status
                    WHEN p_now > q.deadline_ms THEN 4 ELSE u.code END,
                output = CASE WHEN NOT (q.expires_ms > p_now AND q.status < 3) THEN q.output
                    WHEN p_now <= q.deadline_ms AND u.code = 3 THEN u.value END,
                failure = CASE WHEN NOT (q.expires_ms > p_now AND q.status < 3) THEN q.failure
                    WHEN p_now > q.deadline_ms THEN p_timeout
                    WHEN u.code = 4 THEN u.value END,
                params = CASE WHEN q.expires_ms > p_now AND q.status < 3 THEN NULL
                    ELSE q.params END,
                limit_owner = CASE WHEN q.expires_ms > p_now AND q.status < 3 THEN NULL
                    ELSE q.limit_owner END,
                limit_task = CASE WHEN q.expires_ms > p_now AND q.status < 3 THEN false
                    ELSE q.limit_task END,
                expires_ms = CASE WHEN q.expires_ms > p_now AND q.status < 3
                    THEN p_now + q.ttl_ms ELSE q.expires_ms END,
                job_open = false
            FROM unnest(p_ids, p_codes, p_values) AS u(id, code, value)
            WHERE q.id = u.id AND q.id = ANY (p_ids)
            RETURNING q.id,
                (CASE WHEN q.expires_ms <= p_now THEN 4 ELSE q.status END)::smallint AS stands,
                CASE WHEN q.watched AND q.expires_ms = p_now + q.ttl_ms
                    THEN {schema}.announce(p_channel, q.id) END AS told)
    SELECT coalesce(w.stands, 4::smallint)
        FROM unnest(p_ids) WITH ORDINALITY AS i(id, ord)
        LEFT JOIN written w ON w.id = i.id
        ORDER BY i.ord;
END $$;
