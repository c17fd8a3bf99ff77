-- OEE at every level, from the segments of 20_oee_core.sql (docs/oee.md has the contract).
--
-- reporting.oee_report sums the segments of a level and derives every ratio from the sums
-- (a line's availability is its stations' run time over their planned time, never an average
-- of percentages). Levels:
--   station, line                 any period [p_from, p_to): shifts are cut at its ends;
--   station_shift, line_shift     one row per shift;
--   station_day, line_day         one row per business date (the local date a shift belongs to).
-- Calendar time (TEEP's basis) is the shift at shift levels, the local calendar day (23, 24 or
-- 25 hours) at day levels and the period at period levels, each per station and up to now.
--
-- SECURITY DEFINER: the reporting role reads OEE through these functions and the views over
-- them, never the MES tables underneath (29_oee_security.sql pins their search_path).

-- One row of OEE at any level (docs/oee.md, "The view contract").
CREATE TYPE reporting.oee_row AS (
    site varchar(32),
    line varchar(32),
    station varchar(32),
    shift_name varchar(50),
    shift_start timestamptz,
    shift_end timestamptz,
    business_date date,
    period_start timestamptz,
    period_end timestamptz,
    stations integer,
    calendar_seconds numeric(14, 3),
    planned_seconds numeric(14, 3),
    run_seconds numeric(14, 3),
    downtime_seconds numeric(14, 3),
    total_count bigint,
    good_count bigint,
    scrap_count bigint,
    ideal_cycle_seconds numeric(12, 4),
    availability numeric(16, 6),
    performance numeric(16, 6),
    quality numeric(16, 6),
    oee numeric(16, 6),
    teep numeric(16, 6),
    breakdown_seconds numeric(14, 3),
    setup_seconds numeric(14, 3),
    small_stop_seconds numeric(14, 3),
    small_stop_count bigint,
    reduced_speed_seconds numeric(14, 3),
    startup_reject_count bigint,
    production_reject_count bigint,
    startup_reject_seconds numeric(14, 3),
    production_reject_seconds numeric(14, 3),
    ideal_seconds numeric(14, 3),
    fully_productive_seconds numeric(14, 3),
    unrated_count bigint,
    stop_count bigint,
    failure_count bigint,
    mtbf_seconds numeric(14, 3),
    mttr_seconds numeric(14, 3),
    defect_count bigint
);

CREATE FUNCTION reporting.oee_report(
    p_level varchar,
    p_from timestamptz,
    p_to timestamptz,
    p_first_day date DEFAULT '-infinity',
    p_last_day date DEFAULT 'infinity',
    p_line_id bigint DEFAULT NULL,
    p_station_id bigint DEFAULT NULL
)
RETURNS SETOF reporting.oee_row
LANGUAGE sql STABLE SECURITY DEFINER AS $$
    WITH grouped AS (
        SELECT
            segment.site_id,
            segment.site_timezone,
            segment.line_id,
            CASE WHEN p_level LIKE 'station%' THEN segment.station_id END AS station_id,
            CASE WHEN p_level LIKE '%shift' THEN segment.shift_id END AS shift_id,
            CASE WHEN p_level LIKE '%shift' OR p_level LIKE '%day' THEN segment.business_date END
                AS business_date,
            min(segment.window_start) AS period_start,
            max(segment.window_end) AS period_end,
            count(DISTINCT segment.station_id)::integer AS stations,
            sum(extract(epoch FROM segment.window_end - segment.window_start)) AS span_seconds,
            sum(segment.planned_seconds) AS planned,
            sum(segment.downtime_seconds) AS downtime,
            sum(segment.breakdown_seconds) AS breakdown,
            sum(segment.setup_seconds) AS setup,
            sum(segment.small_stop_seconds) AS small_stops,
            sum(segment.small_stop_count)::bigint AS small_stop_count,
            sum(segment.stop_count)::bigint AS stop_count,
            sum(segment.failure_count)::bigint AS failure_count,
            sum(segment.failure_repair_seconds) AS failure_repair,
            sum(segment.total_count)::bigint AS total,
            sum(segment.good_count)::bigint AS good,
            sum(segment.scrap_count)::bigint AS scrap,
            sum(segment.startup_reject_count)::bigint AS startup_scrap,
            sum(segment.ideal_seconds) AS ideal,
            sum(segment.fully_productive_seconds) AS fully_productive,
            sum(segment.startup_reject_seconds) AS startup_scrap_ideal,
            sum(segment.unrated_count)::bigint AS unrated,
            sum(segment.defect_count)::bigint AS defects
        FROM reporting.oee_segments(
            p_from, p_to, p_first_day, p_last_day, p_line_id, p_station_id
        ) segment
        WHERE p_level IN ('station', 'line', 'station_shift', 'line_shift', 'station_day', 'line_day')
        GROUP BY 1, 2, 3, 4, 5, 6
    ),
    measured AS (
        SELECT
            grouped.*,
            grouped.planned - grouped.downtime AS run,
            CASE
                WHEN p_level LIKE '%shift' THEN grouped.span_seconds
                WHEN p_level LIKE '%day' THEN grouped.stations * greatest(0, extract(epoch FROM
                    least(((grouped.business_date + 1)::timestamp AT TIME ZONE grouped.site_timezone), now())
                    - (grouped.business_date::timestamp AT TIME ZONE grouped.site_timezone)))
                WHEN isfinite(p_from) THEN
                    grouped.stations * extract(epoch FROM least(p_to, now()) - p_from)
            END AS calendar
        FROM grouped
    ),
    rated AS (
        SELECT
            measured.*,
            CASE WHEN measured.planned > 0 THEN measured.run / measured.planned END AS a,
            CASE WHEN measured.run > 0 THEN measured.ideal / measured.run END AS p,
            CASE WHEN measured.total > 0 THEN measured.good::numeric / measured.total END AS q
        FROM measured
    ),
    scored AS (
        SELECT
            rated.*,
            -- no running time or no output: nothing good was made in the planned time
            CASE
                WHEN rated.planned > 0 THEN coalesce(rated.a * rated.p * rated.q, 0)
            END AS overall
        FROM rated
    )
    SELECT
        site.code::varchar(32),
        line.code::varchar(32),
        station.code::varchar(32),
        shift.name::varchar(50),
        shift.starts_at,
        shift.ends_at,
        scored.business_date,
        scored.period_start,
        scored.period_end,
        scored.stations,
        scored.calendar::numeric(14, 3),
        scored.planned::numeric(14, 3),
        scored.run::numeric(14, 3),
        scored.downtime::numeric(14, 3),
        scored.total,
        scored.good,
        scored.scrap,
        (scored.ideal / nullif(scored.total - scored.unrated, 0))::numeric(12, 4),
        scored.a::numeric(16, 6),
        scored.p::numeric(16, 6),
        scored.q::numeric(16, 6),
        scored.overall::numeric(16, 6),
        (scored.overall * scored.planned / nullif(scored.calendar, 0))::numeric(16, 6),
        scored.breakdown::numeric(14, 3),
        scored.setup::numeric(14, 3),
        scored.small_stops::numeric(14, 3),
        scored.small_stop_count,
        -- the performance loss small stops do not explain; negative when the ideal cycle
        -- times are slower than the station really is
        (scored.run - scored.ideal - scored.small_stops)::numeric(14, 3),
        scored.startup_scrap,
        scored.scrap - scored.startup_scrap,
        scored.startup_scrap_ideal::numeric(14, 3),
        (scored.ideal - scored.fully_productive - scored.startup_scrap_ideal)::numeric(14, 3),
        scored.ideal::numeric(14, 3),
        scored.fully_productive::numeric(14, 3),
        scored.unrated,
        scored.stop_count,
        scored.failure_count,
        (scored.run / nullif(scored.failure_count, 0))::numeric(14, 3),
        (scored.failure_repair / nullif(scored.failure_count, 0))::numeric(14, 3),
        scored.defects
    FROM scored
    JOIN mes_site site ON site.id = scored.site_id
    JOIN mes_line line ON line.id = scored.line_id
    LEFT JOIN mes_station station ON station.id = scored.station_id
    LEFT JOIN mes_shift shift ON shift.id = scored.shift_id
    ORDER BY site.code, line.code, scored.business_date, shift.starts_at, station.position
$$;

-- OEE of each station, or each line, over any period: for SQL clients, e.g.
--   SELECT * FROM reporting.oee('2025-03-01 06:00+01', '2025-03-08 06:00+01');
CREATE FUNCTION reporting.oee(p_from timestamptz, p_to timestamptz)
RETURNS SETOF reporting.oee_row
LANGUAGE sql STABLE AS $$
    SELECT * FROM reporting.oee_report('station', p_from, p_to)
$$;

CREATE FUNCTION reporting.oee_line(p_from timestamptz, p_to timestamptz)
RETURNS SETOF reporting.oee_row
LANGUAGE sql STABLE AS $$
    SELECT * FROM reporting.oee_report('line', p_from, p_to)
$$;

-- The views: all history (filter them; for long histories the functions above, given a
-- period, compute only that period).

-- One row per station and shift. The first 17 columns are the contract of issue 6, in order.
CREATE VIEW reporting.v_oee_shift AS
SELECT
    site, line, station, shift_name, shift_start, shift_end,
    planned_seconds, run_seconds, downtime_seconds,
    total_count, good_count, scrap_count, ideal_cycle_seconds,
    availability, performance, quality, oee,
    teep, business_date, calendar_seconds,
    breakdown_seconds, setup_seconds, small_stop_seconds, small_stop_count,
    reduced_speed_seconds, startup_reject_count, production_reject_count,
    startup_reject_seconds, production_reject_seconds,
    ideal_seconds, fully_productive_seconds, unrated_count,
    stop_count, failure_count, mtbf_seconds, mttr_seconds
FROM reporting.oee_report('station_shift', '-infinity', 'infinity');

-- One row per line and shift: the line's stations together.
CREATE VIEW reporting.v_oee_line_shift AS
SELECT
    site, line, shift_name, shift_start, shift_end, business_date, stations,
    planned_seconds, run_seconds, downtime_seconds,
    total_count, good_count, scrap_count, ideal_cycle_seconds,
    availability, performance, quality, oee, teep, calendar_seconds,
    breakdown_seconds, setup_seconds, small_stop_seconds, small_stop_count,
    reduced_speed_seconds, startup_reject_count, production_reject_count,
    startup_reject_seconds, production_reject_seconds,
    ideal_seconds, fully_productive_seconds, unrated_count,
    stop_count, failure_count, mtbf_seconds, mttr_seconds
FROM reporting.oee_report('line_shift', '-infinity', 'infinity');

-- One row per station and business date.
CREATE VIEW reporting.v_oee_station_day AS
SELECT
    site, line, station, business_date,
    planned_seconds, run_seconds, downtime_seconds,
    total_count, good_count, scrap_count, ideal_cycle_seconds,
    availability, performance, quality, oee, teep, calendar_seconds,
    breakdown_seconds, setup_seconds, small_stop_seconds, small_stop_count,
    reduced_speed_seconds, startup_reject_count, production_reject_count,
    startup_reject_seconds, production_reject_seconds,
    ideal_seconds, fully_productive_seconds, unrated_count,
    stop_count, failure_count, mtbf_seconds, mttr_seconds
FROM reporting.oee_report('station_day', '-infinity', 'infinity');

-- One row per line and business date.
CREATE VIEW reporting.v_oee_line_day AS
SELECT
    site, line, business_date, stations,
    planned_seconds, run_seconds, downtime_seconds,
    total_count, good_count, scrap_count, ideal_cycle_seconds,
    availability, performance, quality, oee, teep, calendar_seconds,
    breakdown_seconds, setup_seconds, small_stop_seconds, small_stop_count,
    reduced_speed_seconds, startup_reject_count, production_reject_count,
    startup_reject_seconds, production_reject_seconds,
    ideal_seconds, fully_productive_seconds, unrated_count,
    stop_count, failure_count, mtbf_seconds, mttr_seconds
FROM reporting.oee_report('line_day', '-infinity', 'infinity');

-- Quality per station and shift: the OEE counts split into the two quality losses, and the
-- defects found at the station (quality events, which need not be scrap).
CREATE VIEW reporting.v_quality_per_shift AS
SELECT
    site, line, station, shift_name, shift_start, shift_end, business_date,
    total_count, good_count, scrap_count, quality,
    startup_reject_count, production_reject_count, defect_count
FROM reporting.oee_report('station_shift', '-infinity', 'infinity');
