// The VIN trace's charts: each signal around the instant (band of lowest/highest, mean line)
// and Foresight's scores with their thresholds, a vertical line at the instant and red dots at
// alerts. A click on a chart traces the instant clicked. The table #trace-telemetry scrolls to
// the sample nearest the instant. Uses Aegis.charts (station.js).
(function () {
  "use strict";

  const source = document.getElementById("trace-data");
  if (!source || !window.uPlot || !window.Aegis || !Aegis.charts) return;
  const data = JSON.parse(source.textContent);
  const options = {
    zone: data.zone,
    cursorAt: data.at,
    xRange: () => [data.start, data.end],
    height: 160,
  };

  function traceAt(seconds) {
    const params = new URLSearchParams(location.search);
    params.set("at", new Date(Math.round(seconds * 1000)).toISOString());
    location.search = params.toString();
  }

  function clickable(plot) {
    plot.over.addEventListener("click", () => {
      const left = plot.cursor.left;
      if (left === null || left === undefined || left < 0) return;
      traceAt(plot.posToVal(left, "x"));
    });
    plot.over.title = "Select to trace this instant";
  }

  data.signals.forEach((columns, i) => {
    const element = document.getElementById(`trace-signal-${i}`);
    if (element) clickable(Aegis.charts.signal(element, columns, options));
  });
  const scoreElement = document.getElementById("trace-score");
  if (scoreElement) {
    if (data.scores.length) {
      const markers = data.alerts.map((a) => ({ ts: a.ts, value: a.score }));
      clickable(Aegis.charts.scores(scoreElement, data.scores, { ...options, markers }));
    } else {
      scoreElement.textContent = "Foresight stored no scores for this station in the window.";
    }
  }

  const nearest = document.querySelector("#trace-telemetry tr.at-instant");
  const box = nearest && nearest.closest(".table-scroll");
  if (nearest && box) box.scrollTop = nearest.offsetTop - box.clientHeight / 2;
})();
