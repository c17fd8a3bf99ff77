// The OEE page's charts (uPlot): availability, performance, quality and OEE per day or shift
// as lines (percent), and the downtime Pareto as bars of minutes lost with the cumulative share
// as a line on its own axis. The x axes are categories (days, shifts, reasons): index positions
// labelled from the data. Every number is also in the tables under the charts.
(function () {
  "use strict";

  const source = document.getElementById("oee-data");
  if (!source || !window.uPlot) return;
  const data = JSON.parse(source.textContent);
  const AXIS = { stroke: "#b8c4d0", grid: { stroke: "#263341", width: 1 }, ticks: { stroke: "#263341" } };
  const FACTORS = [
    ["availability", "Availability", "#3fa7ff"],
    ["performance", "Performance", "#f5b942"],
    ["quality", "Quality", "#3ecf8e"],
    ["oee", "OEE", "#e6edf3"],
  ];

  function width(element) {
    return Math.max(280, Math.floor(element.clientWidth || 600));
  }

  function fit(plot, element) {
    if (!window.ResizeObserver) return;
    new ResizeObserver(() => plot.setSize({ width: width(element), height: plot.height })).observe(element);
  }

  function categories(labels) {
    return {
      ...AXIS,
      splits: () => labels.map((_, i) => i),
      values: (u, splits) => splits.map((i) => {
        // Every label where they fit, every n-th where they would collide.
        const every = Math.ceil(labels.length / Math.max(1, Math.floor(u.bbox.width / devicePixelRatio / 70)));
        return i % every === 0 ? labels[i] : "";
      }),
      gap: 6,
    };
  }

  const percent = (v) => (v === null || v === undefined ? null : Math.round(v * 10000) / 100);

  const trendElement = document.getElementById("oee-trend");
  const trend = data.trend;
  if (trendElement && trend.labels.length) {
    const xs = trend.labels.map((_, i) => i);
    const plot = new uPlot({
      width: width(trendElement),
      height: 260,
      scales: { x: { time: false, range: [-0.5, Math.max(0.5, xs.length - 0.5)] }, y: { range: [0, 105] } },
      axes: [categories(trend.labels), { ...AXIS, size: 50, values: (u, v) => v.map((x) => `${x} %`) }],
      series: [
        { label: data.per === "shift" ? "Shift" : "Day", value: (u, i) => (i === null ? "" : trend.labels[i]) },
        ...FACTORS.map(([key, label, colour]) => ({
          label,
          stroke: colour,
          width: key === "oee" ? 2.5 : 1.5,
          points: { show: true, size: 6, fill: colour },
          value: (u, v) => (v === null ? "–" : `${v.toFixed(2)} %`),
        })),
      ],
    }, [xs, ...FACTORS.map(([key]) => trend[key].map(percent))], trendElement);
    fit(plot, trendElement);
  } else if (trendElement) {
    trendElement.textContent = "No shifts in these days.";
  }

  const paretoElement = document.getElementById("oee-pareto");
  const pareto = data.pareto;
  if (paretoElement && pareto.labels.length) {
    const xs = pareto.labels.map((_, i) => i);
    const plot = new uPlot({
      width: width(paretoElement),
      height: 260,
      scales: {
        x: { time: false, range: [-0.5, xs.length - 0.5] },
        minutes: { range: (u, lo, hi) => [0, hi * 1.1 || 1] },
        share: { range: [0, 100] },
      },
      axes: [
        categories(pareto.labels),
        { ...AXIS, scale: "minutes", size: 55, label: "minutes lost" },
        { ...AXIS, scale: "share", side: 1, size: 50, grid: { show: false }, values: (u, v) => v.map((x) => `${x} %`) },
      ],
      series: [
        { label: "Reason", value: (u, i) => (i === null ? "" : `${pareto.labels[i]} ${pareto.names[i]}`) },
        {
          label: "Minutes lost",
          scale: "minutes",
          fill: "rgba(255,93,93,0.55)",
          stroke: "#ff5d5d",
          paths: uPlot.paths.bars({ size: [0.6, 80] }),
          points: { show: false },
          value: (u, v) => (v === null ? "–" : v.toFixed(1)),
        },
        {
          label: "Cumulative share",
          scale: "share",
          stroke: "#e6edf3",
          width: 2,
          points: { show: true, size: 6, fill: "#e6edf3" },
          value: (u, v) => (v === null ? "–" : `${v.toFixed(1)} %`),
        },
      ],
    }, [xs, pareto.minutes, pareto.cumulative], paretoElement);
    fit(plot, paretoElement);
  } else if (paretoElement) {
    paretoElement.textContent = "No unplanned stops in this period.";
  }
})();
