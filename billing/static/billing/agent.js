// Follows an agent through payment -> provisioning -> running on its billing page:
// polls the page's JSON status URL about once a second until the state settles,
// then reloads once so the rest of the page (subscription, actions) is current too.
(function () {
  "use strict";
  var root = document.getElementById("agent-progress");
  var initialData = document.getElementById("agent-initial");
  if (!root || !initialData) { return; }
  var initial = JSON.parse(initialData.textContent);
  var STEP_OF = { pending_payment: 0, provisioning: 1, running: 2 };
  var steps = root.querySelectorAll(".steps li");
  var label = document.getElementById("agent-status-label");
  var outcome = document.getElementById("agent-outcome");

  function sentence(text) { return text.charAt(0).toUpperCase() + text.slice(1); }

  function show(state) {
    root.dataset.status = state.status;
    label.textContent = state.label;
    label.className = "status status-" + state.status;
    var current = STEP_OF.hasOwnProperty(state.status) ? STEP_OF[state.status] : -1;
    steps.forEach(function (li, index) {
      li.classList.remove("done", "current", "failed");
      if (state.status === "running" || index < current) { li.classList.add("done"); }
      else if (index === current) { li.classList.add("current"); }
      else if (state.status === "failed" && index < 2) { li.classList.add(index === 0 ? "done" : "failed"); }
    });
    var good = state.status === "running";
    outcome.className = "outcome " + (good ? "good" : "bad");
    if (good) { outcome.textContent = "Your agent is running."; }
    else if (current === -1) { outcome.textContent = state.reason ? sentence(state.reason) : state.label + "."; }
    else { outcome.textContent = ""; }
  }

  function poll() {
    fetch(root.dataset.statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (state) {
        if (!state) { window.setTimeout(poll, 3000); return; }
        show(state);
        if (state.settled && (state.status !== initial.status || state.subscription !== initial.subscription)) {
          window.location.reload();
        } else if (!state.settled) {
          window.setTimeout(poll, 1000);
        }
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }

  show(initial);
  if (!initial.settled) { window.setTimeout(poll, 1000); }
})();
