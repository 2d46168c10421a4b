// The overview, redrawn from each event of /events (the same data the page was made from).
"use strict";

function text(element, value) {
  if (element) element.textContent = value;
}

function counts(list, values, key, label) {
  list.replaceChildren(...Object.entries(values).flatMap(([name, count]) => {
    const term = document.createElement("dt");
    term.textContent = label(name);
    const value = document.createElement("dd");
    value.dataset[key] = name;
    value.textContent = count;
    return [term, value];
  }));
}

function redraw(data) {
  const alerts = document.getElementById("alerts");
  alerts.className = data.alerts.length ? "alerting" : "quiet";
  text(document.getElementById("alert-count"), data.alerts.length);
  const list = document.getElementById("alert-list");
  list.replaceChildren(...data.alerts.map((alert) => {
    const item = document.createElement("li");
    item.className = "alert";
    item.textContent = alert.text;
    return item;
  }));
  for (const row of data.ledgers) {
    const tr = document.querySelector(`tr[data-ledger="${CSS.escape(row.ledger)}"]`);
    if (!tr) continue;
    text(tr.querySelector(".role"), row.role);
    text(tr.querySelector(".operator"), row.operator);
    text(tr.querySelector(".height"), row.height);
    text(tr.querySelector(".checkpoint"), row.checkpoint === null ? "none" : row.checkpoint);
    text(tr.querySelector(".rate"), row.entries_per_s);
    tr.querySelector("polyline").setAttribute("points", row.chart);
    text(tr.querySelector(".locks"), row.locks_held);
    text(tr.querySelector(".expiry"),
      row.soonest_expiry_in_ms === null ? "" : `${(row.soonest_expiry_in_ms / 1000).toFixed(1)} s`);
    text(tr.querySelector(".intact"), row.intact ? "verified" : "BROKEN");
    tr.className = row.intact ? "" : "broken";
  }
  counts(document.getElementById("settlements"), data.settlements, "count", (name) => name.replaceAll("_", " "));
  counts(document.getElementById("phases"), data.phases, "phase", (name) => name);
  text(document.getElementById("ended-per-s"), data.flow.ended_per_s);
  document.getElementById("ended-chart").setAttribute("points", data.flow.ended_chart);
  text(document.getElementById("p50-ms"), data.flow.p50_ms === null ? "" : data.flow.p50_ms);
  document.getElementById("p50-chart").setAttribute("points", data.flow.p50_chart);
  text(document.getElementById("updated"), new Date(data.time_ms).toISOString());
}

const events = new EventSource("/events");
events.onmessage = (event) => redraw(JSON.parse(event.data));
events.onerror = () => document.body.classList.add("disconnected");
events.onopen = () => document.body.classList.remove("disconnected");
