-- v_vin_trace: stored telemetry with the MES state of each sample's own instant, one row per
-- sample and numeric signal, so a client asks "what happened to this VIN at 09:22:47" with
-- WHERE vin = '…' AND ts BETWEEN … and needs no JSON. Samples taken while no unit was at the
-- station are included with vin, serial, unit_id and work_order NULL (filter by station).
-- `firmware` lists the unit's firmware valid at ts as 'COMPONENT=version' pairs in component
-- order, separated by ';' (e.g. 'BCM=1.0.2;EPS=4.2.1'); NULL when none was known.
-- Filters on vin, ts and station reach the telemetry table's indexes.
CREATE VIEW reporting.v_vin_trace AS
SELECT
    s.ts,
    s.seq,
    site.code::varchar(32) AS site,
    line.code::varchar(32) AS line,
    st.code::varchar(32) AS station,
    s.vin::varchar(17) AS vin,
    s.serial::varchar(64) AS serial,
    s.unit_id,
    wo.external_id::varchar(64) AS work_order,
    p.code::varchar(32) AS product,
    sh.name::varchar(50) AS shift_name,
    fw.firmware,
    sig.key::varchar(128) AS signal,
    (sig.value)::numeric AS value,
    def.unit::varchar(16) AS signal_unit
FROM public.telemetry_sample AS s
-- Once per sample, before the signals multiply the rows.
CROSS JOIN LATERAL (
    SELECT string_agg(pair.key || '=' || pair.value, ';' ORDER BY pair.key)::varchar AS firmware
    FROM jsonb_each_text(
        CASE WHEN jsonb_typeof(s.firmware) = 'object' THEN s.firmware ELSE '{}' END
    ) AS pair
) AS fw
JOIN public.mes_station AS st ON st.id = s.station_id
JOIN public.mes_line AS line ON line.id = st.line_id
JOIN public.mes_area AS area ON area.id = line.area_id
JOIN public.mes_site AS site ON site.id = area.site_id
CROSS JOIN LATERAL jsonb_each(s.signals) AS sig
LEFT JOIN public.mes_workorder AS wo ON wo.id = s.work_order_id
LEFT JOIN public.mes_product AS p ON p.id = s.product_id
LEFT JOIN public.mes_shift AS sh ON sh.id = s.shift_id
LEFT JOIN public.mes_stationsignal AS def ON def.station_id = s.station_id AND def.name = sig.key
WHERE jsonb_typeof(sig.value) = 'number';
