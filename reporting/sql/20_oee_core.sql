-- OEE, the one computation (docs/oee.md). Every OEE, downtime and quality figure Aegis shows
-- -- the views below, the reporting.* functions ODBC/JDBC clients call, the REST API -- comes
-- out of reporting.oee_segments: one row per station and shift, cut to the period asked for.
--
-- The functions in this file are internal: they read the MES tables as whoever calls them, so
-- only the SECURITY DEFINER functions of 21_oee_report.sql and 22_downtime.sql (and the views
-- over them) are for the reporting role.

-- Seconds covered by a set of time spans.
CREATE FUNCTION reporting.seconds(spans tstzmultirange) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(sum(extract(epoch FROM upper(piece) - lower(piece))), 0)
    FROM unnest(spans) AS piece
$$;

-- How many of `units` units, made evenly over [first_start, last_end] with the last one done at
-- last_end, were done by `instant`. Unit k of n is done at first_start + k/n of the interval, so
-- the answer is floor(n * elapsed / length), computed in whole microseconds so that no rounding
-- ever moves a unit across a shift boundary. An instant count (first_start = last_end: one
-- visit, one telemetry sample) is done at that instant.
CREATE FUNCTION reporting.units_by(
    units bigint, first_start timestamptz, last_end timestamptz, instant timestamptz
) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN instant >= last_end THEN units
        WHEN instant <= first_start THEN 0
        ELSE div(
            units * extract(epoch FROM instant - first_start) * 1000000,
            extract(epoch FROM last_end - first_start) * 1000000
        )::bigint
    END
$$;

-- The units of such a count done in (after, until]: a plain expression, inlined by the planner.
CREATE FUNCTION reporting.units_between(
    units bigint,
    first_start timestamptz,
    last_end timestamptz,
    after timestamptz,
    until timestamptz
) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT reporting.units_by(units, first_start, last_end, until)
        - reporting.units_by(units, first_start, last_end, after)
$$;

-- The units of such a count done inside `spans`: in (lower, upper] of each piece, so a unit done
-- at the instant a shift ends is that shift's (a count for exactly one shift stays in it), and
-- the parts of a count that two shifts share add up to the count (the pieces are disjoint).
CREATE FUNCTION reporting.units_within(
    units bigint, first_start timestamptz, last_end timestamptz, spans tstzmultirange
) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        sum(
            reporting.units_by(units, first_start, last_end, upper(piece))
            - reporting.units_by(units, first_start, last_end, lower(piece))
        ),
        0
    )::bigint
    FROM unnest(spans) AS piece
$$;

-- Each downtime reason with every node above it in the tree (itself at steps 0). The depth
-- guard stops a parent loop someone made in the admin from running forever.
CREATE FUNCTION reporting.downtime_reason_ancestry()
RETURNS TABLE (reason_id bigint, ancestor_id bigint, steps integer, ancestor_depth integer)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE chain AS (
        SELECT reason.id AS reason_id, reason.id AS ancestor_id, reason.parent_id, 0 AS steps
        FROM mes_downtimereason reason
        UNION ALL
        SELECT chain.reason_id, parent.id, parent.parent_id, chain.steps + 1
        FROM chain
        JOIN mes_downtimereason parent ON parent.id = chain.parent_id
        WHERE chain.steps < 32
    )
    SELECT
        chain.reason_id,
        chain.ancestor_id,
        chain.steps,
        -- the root is depth 1
        (max(chain.steps) OVER (PARTITION BY chain.reason_id) - chain.steps + 1)::integer
    FROM chain
$$;

-- The loss category of each reason: its own, else the nearest ancestor's, else a breakdown.
CREATE FUNCTION reporting.downtime_reason_category()
RETURNS TABLE (reason_id bigint, loss_category varchar)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (ancestry.reason_id)
        ancestry.reason_id,
        coalesce(nullif(ancestor.loss_category, ''), 'breakdown')::varchar
    FROM reporting.downtime_reason_ancestry() ancestry
    JOIN mes_downtimereason ancestor ON ancestor.id = ancestry.ancestor_id
    ORDER BY ancestry.reason_id, (nullif(ancestor.loss_category, '') IS NULL), ancestry.steps
$$;

-- One row per station and shift overlapping [p_from, p_to) whose business date is in
-- [p_first_day, p_last_day], optionally for one line or one station.
--   span: the part of the shift reported on: cut to [p_from, p_to) and to now (time that has
--         not happened yet is not planned yet: the running shift shows the shift so far);
--   production: the shift's planned production time, the whole shift up to now minus its
--         breaks and the station's planned downtime (planned stops are not losses);
--   follows_shift: another shift of the line ends where this one starts (round-the-clock
--         running hands over without a restart).
CREATE FUNCTION reporting.oee_spans(
    p_from timestamptz,
    p_to timestamptz,
    p_first_day date,
    p_last_day date,
    p_line_id bigint,
    p_station_id bigint
)
RETURNS TABLE (
    station_id bigint,
    shift_id bigint,
    line_id bigint,
    site_id bigint,
    site_timezone varchar,
    shift_name varchar,
    business_date date,
    shift_start timestamptz,
    shift_end timestamptz,
    span tstzrange,
    production tstzmultirange,
    microstop interval,
    startup interval,
    count_source varchar,
    count_signal varchar,
    reject_signal varchar,
    follows_shift boolean
)
LANGUAGE sql STABLE AS $$
    SELECT
        station.id,
        shift.id,
        shift.line_id,
        site.id,
        site.timezone,
        shift.name,
        shift.business_date,
        shift.starts_at,
        shift.ends_at,
        tstzrange(greatest(shift.starts_at, p_from), least(shift.ends_at, p_to, now())),
        tstzmultirange(tstzrange(shift.starts_at, least(shift.ends_at, now())))
            - coalesce(breaks.spans, '{}'::tstzmultirange)
            - coalesce(planned_stops.spans, '{}'::tstzmultirange),
        make_interval(secs => coalesce(station.microstop_seconds, line.microstop_seconds)),
        make_interval(secs => line.startup_seconds),
        station.count_source,
        station.count_signal,
        station.reject_signal,
        EXISTS (
            SELECT 1 FROM mes_shift previous
            WHERE previous.line_id = shift.line_id AND previous.ends_at = shift.starts_at
        )
    FROM mes_shift shift
    JOIN mes_line line ON line.id = shift.line_id
    JOIN mes_area area ON area.id = line.area_id
    JOIN mes_site site ON site.id = area.site_id
    JOIN mes_station station ON station.line_id = shift.line_id
    LEFT JOIN LATERAL (
        SELECT range_agg(tstzrange(pause.starts_at, pause.ends_at)) AS spans
        FROM mes_shiftbreak pause
        WHERE pause.shift_id = shift.id
    ) breaks ON true
    LEFT JOIN LATERAL (
        -- the same expressions as the exclusion constraint's, so its GiST index finds them
        SELECT range_agg(
            tstzrange(stop.started_at, coalesce(stop.ended_at, greatest(now(), stop.started_at)))
        ) AS spans
        FROM mes_downtimeevent stop
        WHERE stop.planned
          AND int8range(stop.station_id, stop.station_id, '[]')
              = int8range(station.id, station.id, '[]')
          AND tstzrange(stop.started_at, coalesce(stop.ended_at, 'infinity'), '[)')
              && tstzrange(shift.starts_at, shift.ends_at)
    ) planned_stops ON true
    WHERE shift.starts_at < least(p_to, now())
      AND shift.ends_at > p_from
      AND greatest(shift.starts_at, p_from) < least(shift.ends_at, p_to, now())
      AND shift.business_date BETWEEN p_first_day AND p_last_day
      AND (p_line_id IS NULL OR shift.line_id = p_line_id)
      AND (p_station_id IS NULL OR station.id = p_station_id)
$$;

-- The unplanned stops of one station touching one shift, each with the time it cost inside
-- the span's planned production time. A stop is judged by its whole length (a 3-minute stop cut
-- in two by a shift change is still a 3-minute stop): shorter than the micro-stop threshold it
-- is a small stop (performance loss), otherwise downtime (availability loss). It is counted
-- once, in the span where it starts, if it cost any production time there. An open stop lasts
-- until now.
CREATE FUNCTION reporting.span_stops(
    p_station_id bigint,
    p_shift_start timestamptz,
    p_shift_end timestamptz,
    p_span tstzrange,
    p_production tstzmultirange,
    p_microstop interval
)
RETURNS TABLE (
    downtime_id bigint,
    reason_id bigint,
    started_at timestamptz,
    ended_at timestamptz,
    duration_seconds numeric,
    availability_loss boolean,
    loss_category varchar,
    lost_seconds numeric,
    counted boolean
)
LANGUAGE sql STABLE AS $$
    SELECT
        stop.id,
        stop.reason_id,
        stop.started_at,
        stop.stop_end,
        extract(epoch FROM stop.stop_end - stop.started_at),
        stop.stop_end - stop.started_at >= p_microstop,
        coalesce(category.loss_category, 'breakdown')::varchar,
        lost.seconds,
        stop.started_at <@ p_span AND lost.seconds > 0
    FROM (
        SELECT
            event.id,
            event.reason_id,
            event.started_at,
            coalesce(event.ended_at, greatest(now(), event.started_at)) AS stop_end
        FROM mes_downtimeevent event
        WHERE NOT event.planned
          AND int8range(event.station_id, event.station_id, '[]')
              = int8range(p_station_id, p_station_id, '[]')
          AND tstzrange(event.started_at, coalesce(event.ended_at, 'infinity'), '[)')
              && tstzrange(p_shift_start, p_shift_end)
    ) stop
    CROSS JOIN LATERAL (
        SELECT reporting.seconds(
            tstzmultirange(tstzrange(stop.started_at, stop.stop_end))
            * p_production
            * tstzmultirange(p_span)
        ) AS seconds
    ) lost
    LEFT JOIN reporting.downtime_reason_category() category ON category.reason_id = stop.reason_id
$$;

-- When scrap counts as startup rejects: the first `p_startup` of each stretch of running time
-- (planned production time minus downtime), except a stretch that starts with the shift when
-- the line was running into it from the previous shift.
CREATE FUNCTION reporting.startup_spans(
    p_running tstzmultirange,
    p_startup interval,
    p_shift_start timestamptz,
    p_follows_shift boolean
) RETURNS tstzmultirange
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        range_agg(tstzrange(lower(piece), least(upper(piece), lower(piece) + p_startup))),
        '{}'::tstzmultirange
    )
    FROM unnest(p_running) AS piece
    WHERE p_startup > interval '0'
      AND NOT (p_follows_shift AND lower(piece) = p_shift_start)
$$;

-- Increments of a PLC's cumulative counter signal at one station in (lower, upper] of the span,
-- attributed to the sample that shows them. A counter that went down was reset: it counted its new value since. The
-- first sample has nothing to compare with unless a sample from the day before the span does.
CREATE FUNCTION reporting.counter_increments(
    p_station_id bigint, p_signal varchar, p_span tstzrange
)
RETURNS TABLE (ts timestamptz, product_id bigint, increment numeric)
LANGUAGE sql STABLE AS $$
    SELECT counted.ts, counted.product_id,
        CASE
            WHEN counted.previous IS NULL THEN 0
            WHEN counted.value >= counted.previous THEN counted.value - counted.previous
            ELSE counted.value
        END
    FROM (
        SELECT
            sample.ts,
            sample.product_id,
            sample.value,
            lag(sample.value) OVER (ORDER BY sample.ts, sample.seq) AS previous,
            sample.ts > lower(p_span) AS inside
        FROM (
            SELECT reading.ts, reading.seq, reading.product_id,
                (reading.signals ->> p_signal)::numeric AS value
            FROM telemetry_sample reading
            WHERE reading.station_id = p_station_id
              AND reading.ts > lower(p_span)
              AND reading.ts <= upper(p_span)
              AND jsonb_typeof(reading.signals -> p_signal) = 'number'
            UNION ALL
            (
                SELECT reading.ts, reading.seq, reading.product_id,
                    (reading.signals ->> p_signal)::numeric
                FROM telemetry_sample reading
                WHERE reading.station_id = p_station_id
                  AND reading.ts <= lower(p_span)
                  AND reading.ts > lower(p_span) - interval '1 day'
                  AND jsonb_typeof(reading.signals -> p_signal) = 'number'
                ORDER BY reading.ts DESC, reading.seq DESC
                LIMIT 1
            )
        ) sample
    ) counted
    WHERE counted.inside AND p_signal <> ''
$$;

-- What one station made inside one span, per product, from the source the station uses:
--   reported  -- ProductionCount rows (REST, webhook, simulator): each interval's units are
--                spread evenly over it, the last one done at its end (reporting.units_by);
--   visits    -- every visit that ended in the span is one unit, done when it left; scrap if
--                the unit was scrapped and this station was the last it visited;
--   telemetry -- the increments of the station's part counter signal, each at its sample's
--                time; the reject counter's increments are among those parts, moved from good
--                to scrap.
-- `startup_scrap` is the scrap done inside `p_startup`.
CREATE FUNCTION reporting.span_output(
    p_station_id bigint,
    p_count_source varchar,
    p_count_signal varchar,
    p_reject_signal varchar,
    p_span tstzrange,
    p_startup tstzmultirange
)
RETURNS TABLE (product_id bigint, good bigint, scrap bigint, startup_scrap bigint)
LANGUAGE sql STABLE AS $$
    SELECT
        work_order.product_id,
        reporting.units_between(
            report.good, report.interval_start, report.interval_end, lower(p_span), upper(p_span)
        ),
        reporting.units_between(
            report.scrap, report.interval_start, report.interval_end, lower(p_span), upper(p_span)
        ),
        -- (most counts have no scrap, most spans no startup time: skip the unnest then)
        CASE
            WHEN report.scrap = 0 OR isempty(p_startup) THEN 0
            ELSE reporting.units_within(
                report.scrap, report.interval_start, report.interval_end, p_startup
            )
        END
    FROM mes_productioncount report
    LEFT JOIN mes_workorder work_order ON work_order.id = report.work_order_id
    WHERE p_count_source = 'reported'
      AND int8range(report.station_id, report.station_id, '[]')
          = int8range(p_station_id, p_station_id, '[]')
      AND tstzrange(report.interval_start, coalesce(report.interval_end, 'infinity'), '[)')
          && p_span
    UNION ALL
    SELECT
        work_order.product_id,
        1 - judged.scrapped,
        judged.scrapped,
        reporting.units_within(judged.scrapped, visit.left_at, visit.left_at, p_startup)
    FROM mes_stationvisit visit
    JOIN mes_unit unit ON unit.id = visit.unit_id
    JOIN mes_workorder work_order ON work_order.id = unit.work_order_id
    CROSS JOIN LATERAL (
        SELECT CASE
            WHEN unit.status = 'scrapped' AND NOT EXISTS (
                SELECT 1 FROM mes_stationvisit later
                WHERE later.unit_id = visit.unit_id AND later.arrived_at > visit.arrived_at
            ) THEN 1
            ELSE 0
        END AS scrapped
    ) judged
    WHERE p_count_source = 'visits'
      AND int8range(visit.station_id, visit.station_id, '[]')
          = int8range(p_station_id, p_station_id, '[]')
      AND tstzrange(visit.arrived_at, coalesce(visit.left_at, 'infinity'), '[)')
          && tstzrange(lower(p_span), upper(p_span), '[]')
      AND visit.left_at > lower(p_span)
      AND visit.left_at <= upper(p_span)
    UNION ALL
    SELECT parts.product_id, parts.increment::bigint, 0, 0
    FROM reporting.counter_increments(p_station_id, p_count_signal, p_span) parts
    WHERE p_count_source = 'telemetry'
    UNION ALL
    SELECT
        rejects.product_id,
        -rejects.increment::bigint,
        rejects.increment::bigint,
        reporting.units_within(rejects.increment::bigint, rejects.ts, rejects.ts, p_startup)
    FROM reporting.counter_increments(p_station_id, p_reject_signal, p_span) rejects
    WHERE p_count_source = 'telemetry' AND p_reject_signal <> ''
$$;

-- The ideal cycle time of a product at a station: its route's operation there. A count with no
-- product (no work order), or a product whose route does not pass the station, is rated at the
-- station's fastest operation of any route: it never flatters performance. A station on no
-- route at all has no ideal time: its units are `unrated` and left out of performance.
CREATE FUNCTION reporting.ideal_cycle_seconds(p_station_id bigint, p_product_id bigint)
RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (
            SELECT min(operation.ideal_cycle_time_s)
            FROM mes_routeoperation operation
            JOIN mes_route route ON route.id = operation.route_id
            WHERE operation.station_id = p_station_id AND route.product_id = p_product_id
        ),
        (
            SELECT min(operation.ideal_cycle_time_s)
            FROM mes_routeoperation operation
            WHERE operation.station_id = p_station_id
        )
    )
$$;

-- The numbers of each station and shift span: time in seconds, counts in units.
CREATE FUNCTION reporting.oee_segments(
    p_from timestamptz,
    p_to timestamptz,
    p_first_day date,
    p_last_day date,
    p_line_id bigint,
    p_station_id bigint
)
RETURNS TABLE (
    station_id bigint,
    shift_id bigint,
    line_id bigint,
    site_id bigint,
    site_timezone varchar,
    shift_name varchar,
    business_date date,
    shift_start timestamptz,
    shift_end timestamptz,
    window_start timestamptz,
    window_end timestamptz,
    planned_seconds numeric,
    downtime_seconds numeric,
    breakdown_seconds numeric,
    setup_seconds numeric,
    small_stop_seconds numeric,
    small_stop_count bigint,
    stop_count bigint,
    failure_count bigint,
    failure_repair_seconds numeric,
    total_count bigint,
    good_count bigint,
    scrap_count bigint,
    startup_reject_count bigint,
    ideal_seconds numeric,
    fully_productive_seconds numeric,
    startup_reject_seconds numeric,
    unrated_count bigint,
    defect_count bigint
)
LANGUAGE sql STABLE AS $$
    WITH span AS (
        SELECT *
        FROM reporting.oee_spans(p_from, p_to, p_first_day, p_last_day, p_line_id, p_station_id)
    ),
    piece AS (
        SELECT span.station_id, span.shift_id, stop.*
        FROM span
        CROSS JOIN LATERAL reporting.span_stops(
            span.station_id,
            span.shift_start,
            span.shift_end,
            span.span,
            span.production,
            span.microstop
        ) stop
    ),
    stops AS (
        SELECT
            piece.station_id,
            piece.shift_id,
            sum(piece.lost_seconds) FILTER (WHERE piece.availability_loss) AS downtime,
            sum(piece.lost_seconds)
                FILTER (WHERE piece.availability_loss AND piece.loss_category = 'breakdown')
                AS breakdown,
            sum(piece.lost_seconds)
                FILTER (WHERE piece.availability_loss AND piece.loss_category = 'setup') AS setup,
            sum(piece.lost_seconds) FILTER (WHERE NOT piece.availability_loss) AS small_stops,
            count(*) FILTER (WHERE NOT piece.availability_loss AND piece.counted)
                AS small_stop_count,
            count(*) FILTER (WHERE piece.availability_loss AND piece.counted) AS stop_count,
            count(*) FILTER (
                WHERE piece.availability_loss AND piece.counted
                  AND piece.loss_category = 'breakdown'
            ) AS failure_count,
            sum(piece.duration_seconds) FILTER (
                WHERE piece.availability_loss AND piece.counted
                  AND piece.loss_category = 'breakdown'
            ) AS failure_repair,
            range_agg(tstzrange(piece.started_at, piece.ended_at))
                FILTER (WHERE piece.availability_loss) AS down
        FROM piece
        GROUP BY piece.station_id, piece.shift_id
    ),
    startup AS (
        SELECT
            span.station_id,
            span.shift_id,
            reporting.startup_spans(
                span.production - coalesce(stops.down, '{}'::tstzmultirange),
                span.startup,
                span.shift_start,
                span.follows_shift
            ) * tstzmultirange(span.span) AS spans
        FROM span
        LEFT JOIN stops ON stops.station_id = span.station_id AND stops.shift_id = span.shift_id
    ),
    made AS (
        SELECT
            span.station_id,
            span.shift_id,
            output.product_id,
            sum(output.good) AS good,
            sum(output.scrap) AS scrap,
            sum(output.startup_scrap) AS startup_scrap
        FROM span
        JOIN startup ON startup.station_id = span.station_id AND startup.shift_id = span.shift_id
        CROSS JOIN LATERAL reporting.span_output(
            span.station_id,
            span.count_source,
            span.count_signal,
            span.reject_signal,
            span.span,
            startup.spans
        ) output
        GROUP BY span.station_id, span.shift_id, output.product_id
    ),
    counted AS (
        SELECT
            made.station_id,
            made.shift_id,
            sum(made.good + made.scrap) AS total,
            sum(made.good) AS good,
            sum(made.scrap) AS scrap,
            sum(made.startup_scrap) AS startup_scrap,
            sum((made.good + made.scrap) * rating.ideal) AS ideal,
            sum(made.good * rating.ideal) AS fully_productive,
            sum(made.startup_scrap * rating.ideal) AS startup_scrap_ideal,
            sum(made.good + made.scrap) FILTER (WHERE rating.ideal IS NULL) AS unrated
        FROM made
        CROSS JOIN LATERAL (
            SELECT reporting.ideal_cycle_seconds(made.station_id, made.product_id) AS ideal
        ) rating
        GROUP BY made.station_id, made.shift_id
    )
    SELECT
        span.station_id,
        span.shift_id,
        span.line_id,
        span.site_id,
        span.site_timezone,
        span.shift_name,
        span.business_date,
        span.shift_start,
        span.shift_end,
        lower(span.span),
        upper(span.span),
        reporting.seconds(span.production * tstzmultirange(span.span)),
        coalesce(stops.downtime, 0),
        coalesce(stops.breakdown, 0),
        coalesce(stops.setup, 0),
        coalesce(stops.small_stops, 0),
        coalesce(stops.small_stop_count, 0),
        coalesce(stops.stop_count, 0),
        coalesce(stops.failure_count, 0),
        coalesce(stops.failure_repair, 0),
        coalesce(counted.total, 0)::bigint,
        coalesce(counted.good, 0)::bigint,
        coalesce(counted.scrap, 0)::bigint,
        coalesce(counted.startup_scrap, 0)::bigint,
        coalesce(counted.ideal, 0),
        coalesce(counted.fully_productive, 0),
        coalesce(counted.startup_scrap_ideal, 0),
        coalesce(counted.unrated, 0)::bigint,
        (
            SELECT count(*)
            FROM mes_qualityevent defect
            WHERE defect.station_id = span.station_id AND defect.found_at <@ span.span
        )
    FROM span
    LEFT JOIN stops ON stops.station_id = span.station_id AND stops.shift_id = span.shift_id
    LEFT JOIN counted ON counted.station_id = span.station_id AND counted.shift_id = span.shift_id
$$;
