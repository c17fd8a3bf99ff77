// The models page: the shadow-against-production chart (Aegis.charts from station.js), and the
// Promote / Roll back buttons, which POST to the existing REST operations with the session and
// its CSRF token. The server checks the role again; its refusal is shown as it words it.
(function () {
  "use strict";

  const source = document.getElementById("models-data");
  const element = document.getElementById("models-compare");
  if (source && element && window.uPlot && window.Aegis && Aegis.charts) {
    const data = JSON.parse(source.textContent);
    Aegis.charts.scores(element, data.series, {
      zone: "UTC",
      height: 240,
      xRange: () => [data.start, data.end],
    });
  }

  const status = document.getElementById("model-action-status");

  function csrfToken() {
    if (window.Aegis && Aegis.live && Aegis.live.csrfToken) {
      const token = Aegis.live.csrfToken();
      if (token) return token;
    }
    const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
    return input ? input.value : "";
  }

  function say(text, bad) {
    if (!status) return;
    status.hidden = false;
    status.textContent = text;
    status.classList.toggle("bad", Boolean(bad));
  }

  async function act(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const body = button.dataset.action === "promote" ? { to: button.dataset.to } : {};
    button.disabled = true;
    say(`${button.textContent}…`);
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        say(`Refused (${response.status}): ${answer.detail || response.statusText}`, true);
        button.disabled = false;
        return;
      }
      say(`Done: ${answer.version} is now ${answer.status}. Reloading…`);
      setTimeout(() => location.reload(), 600);
    } catch (error) {
      say(`Could not reach the server: ${error}`, true);
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) act(button);
  });
})();
