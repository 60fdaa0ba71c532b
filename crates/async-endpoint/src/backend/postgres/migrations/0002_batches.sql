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

-- Starts attempts of delivered jobs, as one begin per job in the arrays' order would: a row per
-- job, in order, with code 0 and the attempt to run, or why not (the job is closed then):
-- 1 gone or terminal, 2 deadline passed (now a timeout), 3 delivered more than `p_max` times
-- (now an internal failure). `p_deliveries[i]` is the delivery count of job `p_ids[i]`.
--
-- Rows are locked in id order first (two batches never wait on each other in a cycle), then
-- judged and written with one UPDATE. Ids repeated in one batch are begun one after the other.
-- The caller bounds the batch.
CREATE FUNCTION {schema}.begin_jobs(p_ids text[], p_deliveries integer[], p_now bigint,
    p_max integer, p_timeout text, p_poison text, p_channel text)
RETURNS TABLE (code smallint, attempt integer, params text, deadline_ms bigint,
    traceparent text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_codes smallint[];
    v_ids text[];
    v_attempts integer[];
    v_params text[];
    v_deadlines bigint[];
    v_traces text[];
    v_told text[];
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
    PERFORM 1 FROM {schema}.requests q WHERE q.id = ANY (p_ids) ORDER BY q.id FOR UPDATE;
    SELECT array_agg((CASE
                WHEN q.id IS NULL OR q.status >= 3 OR q.expires_ms <= p_now THEN 1
                WHEN p_now > q.deadline_ms THEN 2
                WHEN u.delivery > p_max THEN 3
                ELSE 0 END)::smallint ORDER BY u.ord)
        INTO v_codes
        FROM unnest(p_ids, p_deliveries) WITH ORDINALITY AS u(id, delivery, ord)
        LEFT JOIN {schema}.requests q ON q.id = u.id;
    -- 0: running, attempt + 1, TTL refreshed. 1: the job closed. 2, 3: settled as a failure
    -- (params dropped, pending slots freed, TTL refreshed) and the job closed.
    WITH written AS (
        UPDATE {schema}.requests q SET
                status = CASE c.code WHEN 0 THEN 1 WHEN 1 THEN q.status ELSE 4 END,
                attempt = CASE WHEN c.code = 0 THEN q.attempt + 1 ELSE q.attempt END,
                output = CASE WHEN c.code >= 2 THEN NULL ELSE q.output END,
                failure = CASE c.code WHEN 2 THEN p_timeout WHEN 3 THEN p_poison
                    ELSE q.failure END,
                params = CASE WHEN c.code >= 2 THEN NULL ELSE q.params END,
                limit_owner = CASE WHEN c.code >= 2 THEN NULL ELSE q.limit_owner END,
                limit_task = CASE WHEN c.code >= 2 THEN false ELSE q.limit_task END,
                expires_ms = CASE WHEN c.code = 1 THEN q.expires_ms ELSE p_now + q.ttl_ms END,
                job_open = c.code = 0 AND q.job_open
            FROM unnest(p_ids, v_codes) AS c(id, code)
            WHERE q.id = c.id AND (c.code <> 1 OR q.job_open)
            RETURNING q.id, c.code, q.attempt, q.params, q.deadline_ms, q.traceparent, q.watched)
    SELECT array_agg(w.id) FILTER (WHERE w.code = 0),
            array_agg(w.attempt) FILTER (WHERE w.code = 0),
            array_agg(coalesce(w.params, '')) FILTER (WHERE w.code = 0),
            array_agg(w.deadline_ms) FILTER (WHERE w.code = 0),
            array_agg(w.traceparent) FILTER (WHERE w.code = 0),
            array_agg(w.id) FILTER (WHERE w.watched AND w.code <> 1)
        INTO v_ids, v_attempts, v_params, v_deadlines, v_traces, v_told
        FROM written w;
    PERFORM pg_notify(p_channel, 'r ' || t.id) FROM unnest(v_told) AS t(id);
    RETURN QUERY SELECT c.code, coalesce(r.attempt, 0), r.params, coalesce(r.deadline_ms, 0),
            r.traceparent
        FROM unnest(p_ids, v_codes) WITH ORDINALITY AS c(id, code, ord)
        LEFT JOIN unnest(v_ids, v_attempts, v_params, v_deadlines, v_traces)
            AS r(id, attempt, params, deadline_ms, traceparent) ON r.id = c.id
        ORDER BY c.ord;
END $$;

-- Writes attempts' outcomes, as one finish per job in the arrays' order would: each unless its
-- request is terminal (the first terminal state wins; past the deadline it becomes the
-- timeout), closing every job; a row per job, in order, with the status that stands.
-- `p_codes[i]` is 3 (done: `p_values[i]` is the output) or 4 (failed: the failure).
-- Locked in id order, judged, then written with one UPDATE; repeated ids one after the other.
CREATE FUNCTION {schema}.finish_jobs(p_ids text[], p_codes smallint[], p_values text[],
    p_now bigint, p_timeout text, p_channel text)
RETURNS TABLE (stands smallint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_stands smallint[];
    v_settles boolean[];
    v_late boolean[];
    v_told text[];
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
    PERFORM 1 FROM {schema}.requests q WHERE q.id = ANY (p_ids) ORDER BY q.id FOR UPDATE;
    SELECT array_agg((CASE
                WHEN q.id IS NULL OR q.expires_ms <= p_now THEN 4
                WHEN q.status >= 3 THEN q.status
                WHEN p_now > q.deadline_ms THEN 4
                ELSE u.code END)::smallint ORDER BY u.ord),
            array_agg(coalesce(q.expires_ms > p_now AND q.status < 3, false) ORDER BY u.ord),
            array_agg(coalesce(p_now > q.deadline_ms, false) ORDER BY u.ord)
        INTO v_stands, v_settles, v_late
        FROM unnest(p_ids, p_codes) WITH ORDINALITY AS u(id, code, ord)
        LEFT JOIN {schema}.requests q ON q.id = u.id;
    WITH written AS (
        UPDATE {schema}.requests q SET
                status = CASE WHEN s.settles THEN s.stands ELSE q.status END,
                output = CASE WHEN NOT s.settles THEN q.output
                    WHEN s.stands = 3 THEN s.value END,
                failure = CASE WHEN NOT s.settles THEN q.failure
                    WHEN s.late THEN p_timeout
                    WHEN s.stands = 4 THEN s.value END,
                params = CASE WHEN s.settles THEN NULL ELSE q.params END,
                limit_owner = CASE WHEN s.settles THEN NULL ELSE q.limit_owner END,
                limit_task = CASE WHEN s.settles THEN false ELSE q.limit_task END,
                expires_ms = CASE WHEN s.settles THEN p_now + q.ttl_ms ELSE q.expires_ms END,
                job_open = false
            FROM unnest(p_ids, p_values, v_stands, v_settles, v_late)
                AS s(id, value, stands, settles, late)
            WHERE q.id = s.id AND (s.settles OR q.job_open)
            RETURNING q.id, s.settles AND q.watched AS tell)
    SELECT array_agg(w.id) FILTER (WHERE w.tell) INTO v_told FROM written w;
    PERFORM pg_notify(p_channel, 'r ' || t.id) FROM unnest(v_told) AS t(id);
    RETURN QUERY SELECT s.stands FROM unnest(v_stands) WITH ORDINALITY AS s(stands, ord)
        ORDER BY s.ord;
END $$;
