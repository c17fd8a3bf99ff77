// Charts of station signals and Foresight scores (uPlot), and the station page that uses them.
//
// Aegis.charts is shared with the VIN trace (trace.js) and the models page (models.js), which
// load this file before their own:
//   Aegis.charts.signal(element, columns, options)  lowest/highest band and mean line
//   Aegis.charts.scores(element, seriesList, options)  one line per model, thresholds dashed
//   Aegis.charts.fit(plot, element)  keep a chart as wide as its box
// Options: zone (IANA time zone of the plant), cursorAt (epoch s: a vertical line), markers
// ([{ts, value}] drawn as red dots), height.
//
// The station page (#station-data) draws every chart from the data embedded in the page and,
// while its range is "the last N minutes" or the running shift, appends the station.live
// events of Aegis.live and lists defect.alert events as they arrive.
(function () {
  "use strict";

  const COLOURS = ["#3fa7ff", "#f5b942", "#c4a5ff", "#3ecf8e", "#ff8fb1", "#7fdbda"];
  const AXIS = { stroke: "#b8c4d0", grid: { stroke: "#263341", width: 1 }, ticks: { stroke: "#263341" } };
  const BAD = "#ff5d5d";

  function zoned(zone) {
    if (!zone) return undefined;
    return (seconds) => uPlot.tzDate(new Date(seconds * 1e3), zone);
  }

  // Lines across the plot at fixed values (thresholds, limits, nominal range), a vertical
  // cursor at an instant, and red dots at markers: drawn after the series.
  function overlay(lines, cursorAt, markers) {
    return (u) => {
      const ctx = u.ctx;
      const { left, top, width, height } = u.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top, width, height);
      ctx.clip();
      for (const line of typeof lines === "function" ? lines() : lines) {
        if (line.value === null || line.value === undefined) continue;
        const y = Math.round(u.valToPos(line.value, line.scale || "y", true));
        ctx.strokeStyle = line.colour;
        ctx.lineWidth = (line.width || 1) * devicePixelRatio;
        ctx.setLineDash((line.dash || [6, 4]).map((d) => d * devicePixelRatio));
        ctx.beginPath();
        ctx.moveTo(left, y);
        ctx.lineTo(left + width, y);
        ctx.stroke();
      }
      ctx.setLineDash([]);
      if (cursorAt !== undefined && cursorAt !== null) {
        const x = Math.round(u.valToPos(cursorAt, "x", true));
        ctx.strokeStyle = "#3fa7ff";
        ctx.lineWidth = 2 * devicePixelRatio;
        ctx.beginPath();
        ctx.moveTo(x, top);
        ctx.lineTo(x, top + height);
        ctx.stroke();
      }
      for (const marker of markers || []) {
        const x = u.valToPos(marker.ts, "x", true);
        const y = u.valToPos(marker.value, marker.scale || "y", true);
        if (!isFinite(x) || !isFinite(y)) continue;
        ctx.fillStyle = BAD;
        ctx.strokeStyle = "#0f1720";
        ctx.lineWidth = devicePixelRatio;
        ctx.beginPath();
        ctx.arc(x, y, 4.5 * devicePixelRatio, 0, 2 * Math.PI);
        ctx.fill();
        ctx.stroke();
      }
      ctx.restore();
    };
  }

  function width(element) {
    return Math.max(280, Math.floor(element.clientWidth || element.parentElement.clientWidth || 600));
  }

  function fit(plot, element) {
    if (!window.ResizeObserver) return;
    let pending = null;
    new ResizeObserver(() => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(() => plot.setSize({ width: width(element), height: plot.height }));
    }).observe(element);
  }

  // Gaps in the data (Aegis.live.gaps) read as gaps: a null row goes between two runs, one
  // typical step after the last instant before the gap, and uPlot breaks lines and bands there.
  function withGaps(xs, columns) {
    const { step, runs } = Aegis.live.gaps(xs);
    if (runs.length < 2) return [xs, ...columns];
    const outX = [];
    const outColumns = columns.map(() => []);
    runs.forEach(([start, end], index) => {
      if (index > 0) {
        outX.push(xs[start - 1] + step);
        outColumns.forEach((column) => column.push(null));
      }
      for (let i = start; i < end; i++) {
        outX.push(xs[i]);
        outColumns.forEach((column, c) => column.push(columns[c][i]));
      }
    });
    return [outX, ...outColumns];
  }

  // One signal: the lowest and highest value per bucket as a band, the mean as a line.
  function signal(element, columns, options) {
    options = options || {};
    const unit = columns.unit ? ` [${columns.unit}]` : "";
    const lines = [];
    const nominal = columns.nominal || [];
    if (nominal[0] !== null && nominal[0] !== undefined) lines.push({ value: nominal[0], colour: "#6b7c8d" });
    if (nominal[1] !== null && nominal[1] !== undefined) lines.push({ value: nominal[1], colour: "#6b7c8d" });
    const plot = new uPlot(
      {
        width: width(element),
        height: options.height || 180,
        tzDate: zoned(options.zone),
        scales: { x: { time: true, range: options.xRange }, y: { auto: true } },
        axes: [AXIS, { ...AXIS, size: 60 }],
        series: [
          {},
          { label: `lowest${unit}`, stroke: "rgba(63,167,255,0.55)", width: 1 },
          { label: `highest${unit}`, stroke: "rgba(63,167,255,0.55)", width: 1 },
          { label: `mean${unit}`, stroke: "#e6edf3", width: 1.5 },
        ],
        bands: [{ series: [2, 1], fill: "rgba(63,167,255,0.22)" }],
        hooks: { draw: [overlay(lines, options.cursorAt, options.markers)] },
        legend: { live: true },
      },
      withGaps(columns.ts, [columns.min, columns.max, columns.mean]),
      element
    );
    fit(plot, element);
    return plot;
  }

  // Several series on one time axis: the union of their instants, null where one has none.
  function align(seriesList) {
    const stamps = new Set();
    for (const series of seriesList) for (const ts of series.ts) stamps.add(ts);
    const xs = Array.from(stamps).sort((a, b) => a - b);
    const index = new Map(xs.map((ts, i) => [ts, i]));
    const columns = seriesList.map((series) => {
      const values = new Array(xs.length).fill(null);
      series.ts.forEach((ts, i) => { values[index.get(ts)] = series.max[i]; });
      return values;
    });
    return withGaps(xs, columns);
  }

  function scoreLabel(series) {
    if (series.source === "baseline") return "statistical baseline";
    return series.shadow ? `${series.label} (shadow)` : series.label;
  }

  // Each model's highest score per bucket; its threshold as a dashed line of its colour.
  function scores(element, seriesList, options) {
    options = options || {};
    // Read at every redraw: a live threshold may change.
    const lines = () => seriesList.map((series, i) => ({
      value: series.threshold,
      colour: COLOURS[i % COLOURS.length],
      width: 1.5,
    }));
    const plot = new uPlot(
      {
        width: width(element),
        height: options.height || 200,
        tzDate: zoned(options.zone),
        scales: { x: { time: true, range: options.xRange }, y: { auto: true, range: (u, lo, hi) => {
          const top = Math.max(hi, ...seriesList.map((s) => s.threshold || 0)) * 1.1 || 1;
          return [Math.min(0, lo), top];
        } } },
        axes: [AXIS, { ...AXIS, size: 60 }],
        series: [
          {},
          ...seriesList.map((series, i) => ({
            label: scoreLabel(series),
            stroke: COLOURS[i % COLOURS.length],
            width: series.shadow ? 1.25 : 1.75,
            dash: series.shadow ? [4, 3] : undefined,
            spanGaps: false,
          })),
        ],
        hooks: { draw: [overlay(lines, options.cursorAt, options.markers)] },
      },
      align(seriesList),
      element
    );
    fit(plot, element);
    return plot;
  }

  window.Aegis = window.Aegis || {};
  window.Aegis.charts = { signal, scores, align, withGaps, overlay, fit, width, zoned, AXIS, COLOURS };

  // -- the station page -------------------------------------------------------------------

  const source = document.getElementById("station-data");
  if (!source || !window.uPlot) return;
  const data = JSON.parse(source.textContent);
  const zone = data.zone;
  const xRange = data.live ? undefined : () => [data.start, data.end];

  const signalPlots = data.signals.map((columns, i) => {
    const element = document.getElementById(`signal-chart-${i}`);
    return element ? { columns, plot: signal(element, columns, { zone, xRange }) } : null;
  }).filter(Boolean);

  // The live score is the production model's (the baseline's without one): the series that
  // station.live events extend, added empty when the range held no such scores yet.
  let liveScore = data.scores.find((s) => !s.shadow && s.source === "model") ||
    data.scores.find((s) => !s.shadow) || null;
  if (!liveScore && data.live) {
    liveScore = { label: "live score", source: "model", shadow: false, threshold: null, ts: [], max: [] };
    data.scores.push(liveScore);
  }
  const alertMarks = data.alerts.map((a) => ({ ts: a.ts, value: a.score })).sort((a, b) => a.ts - b.ts);
  const scoreElement = document.getElementById("score-chart");
  let scorePlot = null;
  if (scoreElement && data.scores.length) {
    scorePlot = scores(scoreElement, data.scores, { zone, xRange, markers: alertMarks });
  } else if (scoreElement) {
    scoreElement.textContent = "No scores in this range.";
  }

  data.spc.forEach((chart, i) => {
    const location = document.getElementById(`spc-location-${i}`);
    const spread = document.getElementById(`spc-spread-${i}`);
    const onLocation = (v) => v.chart === chart.location;
    const zones = [1, 2].flatMap((k) => [
      { value: chart.centre + k * chart.zone, colour: "#34485c", dash: [2, 4] },
      { value: chart.centre - k * chart.zone, colour: "#34485c", dash: [2, 4] },
    ]);
    const limits = [
      { value: chart.ucl, colour: BAD, dash: [6, 3], width: 1.5 },
      { value: chart.lcl, colour: BAD, dash: [6, 3], width: 1.5 },
      { value: chart.centre, colour: "#3ecf8e", dash: [1, 0] },
    ];
    const pointSeries = (label, colour) => ({
      label, stroke: colour, width: 1, points: { show: true, size: 4, fill: colour },
    });
    const yRange = (lo, hi, values) => {
      const all = values.filter((v) => v !== null && v !== undefined);
      const low = Math.min(lo, ...all);
      const high = Math.max(hi, ...all);
      const pad = (high - low) * 0.08 || 1;
      return [low - pad, high + pad];
    };
    if (location) {
      const plot = new uPlot({
        width: width(location), height: 200, tzDate: zoned(zone),
        scales: { x: { time: true, range: xRange }, y: { range: () => yRange(chart.lcl, chart.ucl, chart.points) } },
        axes: [AXIS, { ...AXIS, size: 60 }],
        series: [{}, pointSeries(`${chart.location.toUpperCase()} ${chart.signal}`, "#e6edf3")],
        hooks: { draw: [overlay([...zones, ...limits], undefined,
          chart.violations.filter(onLocation).map((v) => ({ ts: v.ts, value: v.value })))] },
      }, [chart.ts, chart.points], location);
      fit(plot, location);
    }
    if (spread) {
      const plot = new uPlot({
        width: width(spread), height: 130, tzDate: zoned(zone),
        scales: { x: { time: true, range: xRange }, y: { range: () => yRange(chart.range_lcl, chart.range_ucl, chart.spread_points) } },
        axes: [AXIS, { ...AXIS, size: 60 }],
        series: [{}, pointSeries(`${chart.spread.toUpperCase()} ${chart.signal}`, "#8cc8ff")],
        hooks: { draw: [overlay([
          { value: chart.range_ucl, colour: BAD, dash: [6, 3], width: 1.5 },
          { value: chart.range_lcl, colour: BAD, dash: [6, 3], width: 1.5 },
          { value: chart.range_centre, colour: "#3ecf8e", dash: [1, 0] },
        ], undefined, chart.violations.filter((v) => !onLocation(v)).map((v) => ({ ts: v.ts, value: v.value })))] },
      }, [chart.ts, chart.spread_points], spread);
      fit(plot, spread);
    }
  });

  if (!data.live || !window.Aegis.live) return;

  // -- live ---------------------------------------------------------------------------------

  const state = document.getElementById("live-state");
  const announcer = document.getElementById("alert-announcer");
  const alertRows = document.querySelector("#station-alerts tbody");
  let redrawQueued = false;

  function trim(columns, keys, oldest) {
    let drop = 0;
    while (drop < columns.ts.length && columns.ts[drop] < oldest) drop++;
    if (drop) for (const key of keys) columns[key].splice(0, drop);
  }

  function redraw() {
    redrawQueued = false;
    for (const { columns, plot } of signalPlots) {
      plot.setData(withGaps(columns.ts, [columns.min, columns.max, columns.mean]));
    }
    if (scorePlot) scorePlot.setData(align(data.scores));
  }

  Aegis.live.audience({ station: data.station });
  Aegis.live.on("status", (event) => {
    if (!state) return;
    state.textContent = event.state === "live" ? "live" : `live: ${event.text}`;
    state.classList.toggle("live-on", event.state === "live");
  });
  Aegis.live.on("station.live", (event) => {
    if (event.station !== data.station) return;
    const ts = (event.ts || Date.now()) / 1000;
    const oldest = ts - data.lengthSeconds;
    for (const { columns } of signalPlots) {
      const values = (event.signals || {})[columns.name];
      if (!values) continue;
      columns.ts.push(ts);
      columns.min.push(values.min);
      columns.max.push(values.max);
      columns.mean.push(values.last);
      trim(columns, ["ts", "min", "max", "mean"], oldest);
      const latest = document.querySelector(`[data-latest="${CSS.escape(columns.name)}"]`);
      if (latest && values.last !== null) latest.textContent = Number(values.last).toFixed(3);
    }
    if (liveScore && event.score !== null && event.score !== undefined) {
      liveScore.ts.push(ts);
      liveScore.max.push(event.score_max !== null && event.score_max !== undefined ? event.score_max : event.score);
      if (event.threshold !== null && event.threshold !== undefined) liveScore.threshold = event.threshold;
      for (const series of data.scores) trim(series, ["ts", "max"], oldest);
      while (alertMarks.length && alertMarks[0].ts < oldest) alertMarks.shift();
      const cell = document.querySelector(`[data-latest-score="${CSS.escape(liveScore.label)}"]`);
      if (cell) cell.textContent = Number(event.score).toFixed(3);
    }
    if (!redrawQueued) {
      redrawQueued = true;
      requestAnimationFrame(redraw);
    }
  });
  const now = document.getElementById("station-unit");
  Aegis.live.on("station.state", (event) => {
    if (event.station !== data.station || !now) return;
    now.replaceChildren();
    const add = (text, href) => {
      const node = href ? document.createElement("a") : document.createTextNode(text);
      if (href) { node.href = href; node.textContent = text; }
      now.appendChild(node);
    };
    if (!event.unit) {
      add(event.downtime ? `Now: down since ${new Date(event.downtime.started_at).toLocaleTimeString([], { timeZone: zone, hour12: false })}` +
        (event.downtime.reason_name ? ` (${event.downtime.reason_name})` : "") + "." : "Now: no unit at this station.");
      return;
    }
    add("Now: unit ");
    const strong = document.createElement("strong");
    strong.textContent = event.unit;
    now.appendChild(strong);
    if (event.vin) { add(" VIN "); add(event.vin, `/trace/?vin=${encodeURIComponent(event.vin)}`); }
    if (event.work_order) { add(" · work order "); add(event.work_order, `/work-orders/${encodeURIComponent(event.work_order)}/`); }
    if (event.arrived_at) add(` · here since ${new Date(event.arrived_at).toLocaleTimeString([], { timeZone: zone, hour12: false })}`);
  });
  Aegis.live.on("defect.alert", (event) => {
    if (event.station_id !== data.station || !alertRows) return;
    const ts = event.timestamp / 1000;
    alertMarks.push({ ts, value: event.anomaly_score });
    alertMarks.sort((a, b) => a.ts - b.ts);
    if (scorePlot) scorePlot.redraw();
    const empty = alertRows.querySelector("tr.empty");
    if (empty) empty.remove();
    const row = document.createElement("tr");
    row.dataset.alertId = event.alert;
    row.className = "fresh";
    const when = new Date(event.timestamp).toLocaleTimeString([], { timeZone: zone, hour12: false });
    const who = event.vin || event.unit || "";
    const cells = [when, `${event.source}${event.model_version ? " " + event.model_version : ""}${event.rule ? " " + event.rule : ""}`,
      Number(event.anomaly_score).toFixed(3), Number(event.threshold).toFixed(3), null, event.status];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      if (i === 4 && who) {
        const link = document.createElement("a");
        link.href = `/trace/?vin=${encodeURIComponent(who)}&at=${encodeURIComponent(event.ts)}`;
        link.textContent = who;
        cell.appendChild(link);
      } else {
        cell.textContent = text === null ? "–" : text;
      }
      row.appendChild(cell);
    });
    alertRows.prepend(row);
    if (announcer) announcer.textContent = `New alert at station ${data.station}: score ${Number(event.anomaly_score).toFixed(2)}${who ? ", unit " + who : ""}.`;
  });
})();
