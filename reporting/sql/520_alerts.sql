-- v_alerts: every defect alert, one row each, with where it was raised (site, line, station),
-- what the MES knew about the unit there at the triggering sample (VIN, serial, work order,
-- product, firmware), what raised it and how (a Foresight model or the statistical baseline:
-- score against threshold and the signal that drove it most; an SPC rule: the charted point
-- against the limit the rule tested, with the rule, chart and signal), and what people did
-- about it (status, acknowledged/resolved by and when, feedback true_defect/false_alarm, note).
-- Empty values of the application (no VIN, no feedback yet) are NULL here.
-- `firmware` is 'COMPONENT=version' pairs in component order separated by ';', as in
-- v_vin_trace.
CREATE VIEW reporting.v_alerts AS
SELECT
    a.id AS alert_id,
    a.ts,
    a.seq,
    a.created_at AS raised_at,
    site.code::varchar(32) AS site,
    line.code::varchar(32) AS line,
    st.code::varchar(32) AS station,
    st.name::varchar(200) AS station_name,
    NULLIF(a.vin, '')::varchar(17) AS vin,
    u.serial::varchar(64) AS serial,
    wo.external_id::varchar(64) AS work_order,
    p.code::varchar(32) AS product,
    CASE
        WHEN jsonb_typeof(a.firmware) = 'object' THEN (
            SELECT string_agg(fw.key || '=' || fw.value, ';' ORDER BY fw.key)
            FROM jsonb_each_text(a.firmware) AS fw
        )
    END::varchar AS firmware,
    a.score::numeric AS score,
    a.threshold::numeric AS threshold,
    a.source::varchar(16) AS source,
    mv.version::varchar(100) AS model_version,
    mv.kind::varchar(32) AS model_kind,
    a.rule::varchar(16) AS spc_rule,
    a.chart::varchar(8) AS spc_chart,
    a.signal::varchar(64) AS spc_signal,
    CASE
        WHEN jsonb_typeof(a.triggering -> 'torque') = 'number' THEN (a.triggering -> 'torque')::numeric
    END AS trigger_torque_nm,
    top.feature::varchar AS top_feature,
    top.signal::varchar AS top_signal,
    top.share AS top_share,
    a.status::varchar(16) AS status,
    ack.username::varchar(150) AS acknowledged_by,
    a.acknowledged_at,
    res.username::varchar(150) AS resolved_by,
    a.resolved_at,
    NULLIF(a.feedback, '')::varchar(16) AS feedback,
    NULLIF(a.note, '')::varchar AS note
FROM public.foresight_defectalert AS a
JOIN public.mes_station AS st ON st.id = a.station_id
JOIN public.mes_line AS line ON line.id = st.line_id
JOIN public.mes_area AS area ON area.id = line.area_id
JOIN public.mes_site AS site ON site.id = area.site_id
LEFT JOIN public.mes_unit AS u ON u.id = a.unit_id
LEFT JOIN public.mes_workorder AS wo ON wo.id = a.work_order_id
LEFT JOIN public.mes_product AS p ON p.id = wo.product_id
LEFT JOIN public.foresight_modelversion AS mv ON mv.id = a.model_version_id
LEFT JOIN public.auth_user AS ack ON ack.id = a.acknowledged_by_id
LEFT JOIN public.auth_user AS res ON res.id = a.resolved_by_id
-- The explanation row with the largest share of the score (ties: the first listed).
LEFT JOIN LATERAL (
    SELECT
        row.value ->> 'feature' AS feature,
        row.value ->> 'signal' AS signal,
        CASE
            WHEN jsonb_typeof(row.value -> 'share') = 'number' THEN (row.value -> 'share')::numeric
        END AS share
    FROM jsonb_array_elements(
        CASE WHEN jsonb_typeof(a.explanation) = 'array' THEN a.explanation ELSE '[]' END
    ) WITH ORDINALITY AS row (value, position)
    WHERE jsonb_typeof(row.value) = 'object'
    ORDER BY share DESC NULLS LAST, row.position
    LIMIT 1
) AS top ON true;
