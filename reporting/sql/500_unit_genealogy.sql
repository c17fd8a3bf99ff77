-- v_unit_genealogy: the life of every unit (serial/VIN) as one row per event, oldest first
-- when ordered by event_at. Every row repeats the unit, its work order, product and line, so
-- a client filters with one plain WHERE (vin = '…', serial = '…', work_order = '…') and needs
-- no joins. Event kinds:
--   registered  the unit's MES record was created (every unit has exactly one such row)
--   visit       the unit was at `station` from event_at until event_end (NULL: still there)
--   firmware    `firmware_component` was flashed with `firmware_version` at event_at
--   quality     a defect was found at event_at (defect_code, severity, detection_source)
-- Columns that do not apply to a row's kind are NULL. Types are ODBC-friendly: varchar with
-- the length of the underlying column, numeric, bigint and timestamptz.
CREATE VIEW reporting.v_unit_genealogy AS
WITH events AS (
    SELECT
        u.id AS unit_id,
        'registered'::varchar(16) AS event_kind,
        u.id AS event_id,
        u.created_at AS event_at,
        NULL::timestamptz AS event_end,
        NULL::bigint AS station_id,
        NULL::varchar(64) AS firmware_component,
        NULL::varchar(64) AS firmware_version,
        NULL::bigint AS defect_id,
        NULL::varchar(16) AS severity,
        NULL::varchar(16) AS detection_source,
        NULL::integer AS detected_by_id,
        NULL::varchar AS description
    FROM public.mes_unit AS u
    UNION ALL
    SELECT
        v.unit_id,
        'visit'::varchar(16),
        v.id,
        v.arrived_at,
        v.left_at,
        v.station_id,
        NULL::varchar(64),
        NULL::varchar(64),
        NULL::bigint,
        NULL::varchar(16),
        NULL::varchar(16),
        NULL::integer,
        NULL::varchar
    FROM public.mes_stationvisit AS v
    UNION ALL
    SELECT
        f.unit_id,
        'firmware'::varchar(16),
        f.id,
        f.flashed_at,
        NULL::timestamptz,
        f.station_id,
        f.component,
        f.version,
        NULL::bigint,
        NULL::varchar(16),
        NULL::varchar(16),
        NULL::integer,
        NULL::varchar
    FROM public.mes_firmwareflash AS f
    UNION ALL
    SELECT
        q.unit_id,
        'quality'::varchar(16),
        q.id,
        q.found_at,
        NULL::timestamptz,
        q.station_id,
        NULL::varchar(64),
        NULL::varchar(64),
        q.defect_id,
        q.severity,
        q.source,
        q.detected_by_id,
        q.description::varchar
    FROM public.mes_qualityevent AS q
)
SELECT
    u.id AS unit_id,
    u.serial::varchar(64) AS serial,
    u.vin::varchar(17) AS vin,
    u.status::varchar(16) AS unit_status,
    wo.external_id::varchar(64) AS work_order,
    wo.status::varchar(16) AS work_order_status,
    p.code::varchar(32) AS product,
    p.name::varchar(200) AS product_name,
    site.code::varchar(32) AS site,
    line.code::varchar(32) AS line,
    e.event_kind,
    e.event_id,
    e.event_at,
    e.event_end,
    EXTRACT(EPOCH FROM e.event_end - e.event_at) AS duration_seconds,
    st.code::varchar(32) AS station,
    st.name::varchar(200) AS station_name,
    e.firmware_component,
    e.firmware_version,
    d.code::varchar(64) AS defect_code,
    d.name::varchar(200) AS defect_name,
    e.severity,
    e.detection_source,
    who.username::varchar(150) AS detected_by,
    e.description
FROM events AS e
JOIN public.mes_unit AS u ON u.id = e.unit_id
JOIN public.mes_workorder AS wo ON wo.id = u.work_order_id
JOIN public.mes_product AS p ON p.id = wo.product_id
JOIN public.mes_line AS line ON line.id = wo.line_id
JOIN public.mes_area AS area ON area.id = line.area_id
JOIN public.mes_site AS site ON site.id = area.site_id
LEFT JOIN public.mes_station AS st ON st.id = e.station_id
LEFT JOIN public.mes_defectcode AS d ON d.id = e.defect_id
LEFT JOIN public.auth_user AS who ON who.id = e.detected_by_id;
