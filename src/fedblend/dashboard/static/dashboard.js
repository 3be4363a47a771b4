// fedblend dashboard: draw the page's Plotly charts and keep the page live (server-sent events).
// No framework: the server renders the HTML; on a store change this script fetches the page's
// content again (?partial=1), swaps the changed regions in place and redraws the charts.
(function () {
  "use strict";
  var body = document.body;
  var base = body.dataset.base || "";
  var version = body.dataset.version || "";
  var clockOffset = 0; // server time - browser time, seconds
  var state = { updates: 0, refreshing: false, pending: false, connected: false };
  window.__fedblend = state;

  function pageData() {
    var el = document.getElementById("page-data");
    if (!el) return { charts: {} };
    try { return JSON.parse(el.textContent); } catch (e) { return { charts: {} }; }
  }

  function emptyLayout(layout) {
    var l = Object.assign({}, layout);
    l.xaxis = Object.assign({}, layout.xaxis || {}, { visible: false });
    l.yaxis = Object.assign({}, layout.yaxis || {}, { visible: false });
    l.annotations = [{ text: "no data yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
                       font: { size: 14, color: "#9ca3af" } }];
    return l;
  }

  function drawCharts() {
    var data = pageData();
    if (typeof data.now === "number") clockOffset = data.now - Date.now() / 1000;
    var charts = data.charts || {};
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var fig = charts[el.dataset.chart];
      if (!fig) { fig = { data: [], layout: { height: 200 } }; }
      var hasData = fig.data.some(function (t) {
        return (t.x && t.x.length) || (t.y && t.y.length) || (t.z && t.z.length) || (t.dimensions && t.dimensions.length && t.dimensions[0].values.length);
      });
      var layout = hasData ? fig.layout : emptyLayout(fig.layout);
      Plotly.react(el, hasData ? fig.data : [], layout, { displaylogo: false, responsive: true,
        modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"] });
    });
  }

  function ago(ts) {
    var d = Math.max(0, Date.now() / 1000 + clockOffset - ts);
    if (d < 60) return Math.round(d) + " s ago";
    if (d < 3600) return Math.round(d / 60) + " min ago";
    if (d < 86400) return (d / 3600).toFixed(1) + " h ago";
    return (d / 86400).toFixed(1) + " days ago";
  }

  function tickClocks() {
    document.querySelectorAll("[data-ts]").forEach(function (el) {
      var ts = parseFloat(el.dataset.ts);
      if (!isNaN(ts)) el.textContent = ago(ts);
    });
  }

  function ids(root, selector, attr) {
    return Array.prototype.map.call(root.querySelectorAll(selector), function (el) { return el.getAttribute(attr); }).join("|");
  }

  function swap(html) {
    var content = document.getElementById("content");
    var tpl = document.createElement("template");
    tpl.innerHTML = html;
    var fresh = tpl.content;
    var sameCharts = ids(fresh, "[data-chart]", "data-chart") === ids(content, "[data-chart]", "data-chart");
    var sameLive = ids(fresh, "[data-live]", "id") === ids(content, "[data-live]", "id");
    if (sameCharts && sameLive) {
      fresh.querySelectorAll("[data-live]").forEach(function (node) {
        var old = document.getElementById(node.id);
        if (old) old.replaceWith(node);
      });
      var data = fresh.getElementById("page-data");
      var oldData = document.getElementById("page-data");
      if (data && oldData) oldData.textContent = data.textContent;
    } else {
      content.querySelectorAll("[data-chart]").forEach(function (el) { Plotly.purge(el); });
      content.innerHTML = "";
      content.appendChild(fresh);
    }
    drawCharts();
    tickClocks();
  }

  var MIN_GAP_MS = 800; // at most about one refresh per second, however often the store changes
  var lastStart = 0;
  var timer = null;

  function refresh() {
    if (state.refreshing) { state.pending = true; return; }
    var wait = lastStart + MIN_GAP_MS - Date.now();
    if (wait > 0) {
      if (!timer) timer = setTimeout(function () { timer = null; refresh(); }, wait);
      return;
    }
    lastStart = Date.now();
    state.refreshing = true;
    var url = location.pathname + "?partial=1";
    fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (resp) {
      if (resp.status === 401 || resp.redirected) { location.reload(); return null; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.text();
    }).then(function (html) {
      if (html !== null) { swap(html); state.updates += 1; }
    }).catch(function (err) {
      console.warn("dashboard refresh failed:", err.message);
    }).finally(function () {
      state.refreshing = false;
      if (state.pending) { state.pending = false; refresh(); }
    });
  }

  function setLive(cls, text) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.className = "live " + cls;
    el.textContent = text;
  }

  function connect() {
    if (!window.EventSource) { setLive("off", "no live updates"); return; }
    var es = new EventSource(base + "/api/stream");
    es.addEventListener("open", function () { state.connected = true; setLive("on", "live"); });
    es.addEventListener("update", function (ev) {
      var msg = JSON.parse(ev.data);
      if (msg.version !== version) { version = msg.version; refresh(); }
    });
    es.addEventListener("error", function () {
      state.connected = false;
      setLive("off", es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…");
    });
    window.addEventListener("pagehide", function () { es.close(); });
  }

  drawCharts();
  tickClocks();
  setInterval(tickClocks, 1000);
  connect();
})();
