-- Downtime: the reason tree, every unplanned stop per station and shift, and the Pareto
-- (docs/oee.md). The stops and the time they cost are those of the OEE computation
-- (reporting.span_stops): a Pareto's seconds add up to the OEE's downtime plus small stops.

-- The reason tree: each reason with its parent, its root, its depth (the root is 1), its path
-- of codes from the root and the loss category its stops count as.
CREATE VIEW reporting.v_downtime_reason AS
SELECT
    reason.code::varchar(64) AS reason_code,
    reason.name::varchar(200) AS reason_name,
    parent.code::varchar(64) AS parent_code,
    tree.root_code::varchar(64) AS root_reason_code,
    tree.depth,
    tree.path::varchar AS reason_path,
    (CASE WHEN reason.planned THEN 'planned' ELSE 'unplanned' END)::varchar(16) AS stop_type,
    category.loss_category::varchar(16) AS loss_category
FROM mes_downtimereason reason
LEFT JOIN mes_downtimereason parent ON parent.id = reason.parent_id
JOIN (
    SELECT
        ancestry.reason_id,
        max(ancestry.ancestor_depth)::integer AS depth,
        (array_agg(ancestor.code ORDER BY ancestry.ancestor_depth))[1] AS root_code,
        string_agg(ancestor.code, ' > ' ORDER BY ancestry.ancestor_depth) AS path
    FROM reporting.downtime_reason_ancestry() ancestry
    JOIN mes_downtimereason ancestor ON ancestor.id = ancestry.ancestor_id
    GROUP BY ancestry.reason_id
) tree ON tree.reason_id = reason.id
JOIN reporting.downtime_reason_category() category ON category.reason_id = reason.id;

-- The ancestry is read by the view above as the reporting role: it runs as its owner.
ALTER FUNCTION reporting.downtime_reason_ancestry() SECURITY DEFINER;
ALTER FUNCTION reporting.downtime_reason_category() SECURITY DEFINER;

-- Every unplanned stop touching [p_from, p_to), one row per station and shift it falls in.
CREATE FUNCTION reporting.downtime_stops(
    p_from timestamptz,
    p_to timestamptz,
    p_line_id bigint DEFAULT NULL,
    p_station_id bigint DEFAULT NULL
)
RETURNS TABLE (
    site varchar(32),
    line varchar(32),
    station varchar(32),
    shift_name varchar(50),
    shift_start timestamptz,
    business_date date,
    reason_code varchar(64),
    reason_name varchar(200),
    root_reason_code varchar(64),
    reason_path varchar,
    loss_category varchar(16),
    loss varchar(16),
    started_at timestamptz,
    ended_at timestamptz,
    duration_seconds numeric(14, 3),
    lost_seconds numeric(14, 3),
    stop_count integer
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    SELECT
        site.code::varchar(32),
        line.code::varchar(32),
        station.code::varchar(32),
        span.shift_name::varchar(50),
        span.shift_start,
        span.business_date,
        reason.reason_code,
        coalesce(reason.reason_name, 'No reason given')::varchar(200),
        reason.root_reason_code,
        reason.reason_path,
        stop.loss_category::varchar(16),
        (CASE WHEN stop.availability_loss THEN 'downtime' ELSE 'small_stop' END)::varchar(16),
        stop.started_at,
        stop.ended_at,
        stop.duration_seconds::numeric(14, 3),
        stop.lost_seconds::numeric(14, 3),
        (CASE WHEN stop.counted THEN 1 ELSE 0 END)::integer
    FROM reporting.oee_spans(
        p_from, p_to, '-infinity', 'infinity', p_line_id, p_station_id
    ) span
    CROSS JOIN LATERAL reporting.span_stops(
        span.station_id,
        span.shift_start,
        span.shift_end,
        span.span,
        span.production,
        span.microstop
    ) stop
    JOIN mes_station station ON station.id = span.station_id
    JOIN mes_line line ON line.id = span.line_id
    JOIN mes_site site ON site.id = span.site_id
    LEFT JOIN mes_downtimereason own_reason ON own_reason.id = stop.reason_id
    LEFT JOIN reporting.v_downtime_reason reason ON reason.reason_code = own_reason.code
    WHERE stop.lost_seconds > 0 OR stop.counted
    ORDER BY stop.started_at, station.code, span.shift_start
$$;

-- The ranked Pareto of unplanned stops over [p_from, p_to) by 'reason', 'station' or 'shift'
-- (the shift's name: Early, Late, ...). By reason, `p_reason_depth` rolls the tree up: 1 groups
-- by root reasons, 2 by their children, and so on; NULL keeps each reason. Stops without a
-- reason have no key. Ranked by lost time (downtime plus small stops).
CREATE FUNCTION reporting.downtime_pareto(
    p_by varchar,
    p_from timestamptz,
    p_to timestamptz,
    p_line_id bigint DEFAULT NULL,
    p_station_id bigint DEFAULT NULL,
    p_reason_depth integer DEFAULT NULL
)
RETURNS TABLE (
    pareto_rank integer,
    key varchar(64),
    name varchar(200),
    stop_count bigint,
    small_stop_count bigint,
    downtime_seconds numeric(14, 3),
    small_stop_seconds numeric(14, 3),
    lost_seconds numeric(14, 3),
    share numeric(16, 6),
    cumulative_share numeric(16, 6)
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    WITH ancestry AS (
        SELECT ancestry.*, ancestor.code, ancestor.name
        FROM reporting.downtime_reason_ancestry() ancestry
        JOIN mes_downtimereason ancestor ON ancestor.id = ancestry.ancestor_id
    ),
    piece AS (
        SELECT span.station_id, span.shift_name, stop.*
        FROM reporting.oee_spans(
            p_from, p_to, '-infinity', 'infinity', p_line_id, p_station_id
        ) span
        CROSS JOIN LATERAL reporting.span_stops(
            span.station_id,
            span.shift_start,
            span.shift_end,
            span.span,
            span.production,
            span.microstop
        ) stop
        WHERE (stop.lost_seconds > 0 OR stop.counted)
          AND p_by IN ('reason', 'station', 'shift')
    ),
    keyed AS (
        SELECT
            CASE p_by
                WHEN 'reason' THEN reason.code
                WHEN 'station' THEN station.code
                ELSE piece.shift_name
            END AS key,
            CASE p_by
                WHEN 'reason' THEN coalesce(reason.name, 'No reason given')
                WHEN 'station' THEN station.name
                ELSE piece.shift_name
            END AS name,
            piece.*
        FROM piece
        JOIN mes_station station ON station.id = piece.station_id
        LEFT JOIN LATERAL (
            SELECT ancestry.code, ancestry.name
            FROM ancestry
            WHERE ancestry.reason_id = piece.reason_id
              AND ancestry.ancestor_depth <= coalesce(p_reason_depth, 2147483647)
            ORDER BY ancestry.ancestor_depth DESC
            LIMIT 1
        ) reason ON true
    ),
    grouped AS (
        SELECT
            keyed.key,
            keyed.name,
            count(*) FILTER (WHERE keyed.counted AND keyed.availability_loss) AS stops,
            count(*) FILTER (WHERE keyed.counted AND NOT keyed.availability_loss) AS small_stops,
            coalesce(sum(keyed.lost_seconds) FILTER (WHERE keyed.availability_loss), 0)
                AS downtime,
            coalesce(sum(keyed.lost_seconds) FILTER (WHERE NOT keyed.availability_loss), 0)
                AS small_stop_time,
            sum(keyed.lost_seconds) AS lost
        FROM keyed
        GROUP BY keyed.key, keyed.name
    )
    SELECT
        (row_number() OVER ranked)::integer,
        grouped.key::varchar(64),
        grouped.name::varchar(200),
        grouped.stops,
        grouped.small_stops,
        grouped.downtime::numeric(14, 3),
        grouped.small_stop_time::numeric(14, 3),
        grouped.lost::numeric(14, 3),
        (grouped.lost / nullif(sum(grouped.lost) OVER (), 0))::numeric(16, 6),
        (sum(grouped.lost) OVER ranked / nullif(sum(grouped.lost) OVER (), 0))::numeric(16, 6)
    FROM grouped
    WINDOW ranked AS (
        ORDER BY grouped.lost DESC, grouped.key NULLS LAST ROWS UNBOUNDED PRECEDING
    )
    ORDER BY 1
$$;

-- Every unplanned stop, per station and shift it falls in (all history: filter it).
CREATE VIEW reporting.v_downtime_stops AS
SELECT
    site::varchar(32) AS site,
    line::varchar(32) AS line,
    station::varchar(32) AS station,
    shift_name::varchar(50) AS shift_name,
    shift_start,
    business_date,
    reason_code::varchar(64) AS reason_code,
    reason_name::varchar(200) AS reason_name,
    root_reason_code::varchar(64) AS root_reason_code,
    reason_path,
    loss_category::varchar(16) AS loss_category,
    loss::varchar(16) AS loss,
    started_at,
    ended_at,
    duration_seconds::numeric(14, 3) AS duration_seconds,
    lost_seconds::numeric(14, 3) AS lost_seconds,
    stop_count
FROM reporting.downtime_stops('-infinity', 'infinity');

-- The Pareto of each line's business day by reason: rank 1 cost the most time.
CREATE VIEW reporting.v_downtime_pareto AS
SELECT
    site::varchar(32) AS site,
    line::varchar(32) AS line,
    business_date,
    reason_code::varchar(64) AS reason_code,
    reason_name::varchar(200) AS reason_name,
    root_reason_code::varchar(64) AS root_reason_code,
    reason_path::varchar AS reason_path,
    loss_category::varchar(16) AS loss_category,
    pareto_rank,
    stop_count,
    small_stop_count,
    downtime_seconds,
    small_stop_seconds,
    lost_seconds,
    share,
    cumulative_share
FROM (
    SELECT
        grouped.*,
        (row_number() OVER ranked)::integer AS pareto_rank,
        (grouped.lost_seconds / nullif(sum(grouped.lost_seconds) OVER per_day, 0))::numeric(16, 6)
            AS share,
        (sum(grouped.lost_seconds) OVER ranked / nullif(sum(grouped.lost_seconds) OVER per_day, 0))
            ::numeric(16, 6) AS cumulative_share
    FROM (
        SELECT
            site, line, business_date, reason_code, reason_name, root_reason_code, reason_path,
            loss_category,
            coalesce(sum(stop_count) FILTER (WHERE loss = 'downtime'), 0)::bigint AS stop_count,
            coalesce(sum(stop_count) FILTER (WHERE loss = 'small_stop'), 0)::bigint
                AS small_stop_count,
            coalesce(sum(lost_seconds) FILTER (WHERE loss = 'downtime'), 0)::numeric(14, 3)
                AS downtime_seconds,
            coalesce(sum(lost_seconds) FILTER (WHERE loss = 'small_stop'), 0)::numeric(14, 3)
                AS small_stop_seconds,
            sum(lost_seconds)::numeric(14, 3) AS lost_seconds
        FROM reporting.downtime_stops('-infinity', 'infinity')
        GROUP BY site, line, business_date, reason_code, reason_name, root_reason_code,
            reason_path, loss_category
    ) grouped
    WINDOW
        per_day AS (PARTITION BY grouped.site, grouped.line, grouped.business_date),
        ranked AS (
            PARTITION BY grouped.site, grouped.line, grouped.business_date
            ORDER BY grouped.lost_seconds DESC, grouped.reason_code NULLS LAST
            ROWS UNBOUNDED PRECEDING
        )
) ranked_reasons;
