// The report's charts, drawn from the JSON embedded in the page (dict_ratelimit/report/html.py).
// Every mark carries its value in data-* attributes, so a test can compare the chart with the data.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function text(parent, x, y, content, anchor) {
    el("text", {x: x, y: y, "text-anchor": anchor || "start"}, parent).textContent = content;
  }
  function tip(node, content) { el("title", {}, node).textContent = content; }
  function pct(v) { return (v * 100).toFixed(1) + " %"; }

  function dailyChart() {
    // each day's highest five-minute demand as a share of the refill (above 1 the bucket
    // drains): readings of a bucket that refills between them can look full all day, demand
    // cannot
    var host = document.getElementById("daily-chart");
    var byPolicy = {};
    data.daily.forEach(function (r) {
      if (r.peak_demand_share == null) { return; }  // null or absent: no figure that day
      (byPolicy[r.policy] = byPolicy[r.policy] || []).push(r);
    });
    var peak = function (p) {
      return Math.max.apply(null, byPolicy[p].map(function (r) { return r.peak_demand_share; }));
    };
    var ranked = Object.keys(byPolicy).sort(function (a, b) { return peak(b) - peak(a); })
      .slice(0, 5);
    if (!ranked.length) { host.textContent = "No demand figure this month."; return; }
    var days = Array.from(new Set(data.daily.map(function (r) { return r.day; }))).sort();
    var top = Math.max(1.2, peak(ranked[0]));
    var W = 940, H = 260, L = 50, R = 30, T = 10, B = 30;
    var svg = el("svg", {width: W, height: H, role: "img"}, host);
    var x = function (i) {
      return L + (days.length > 1 ? i * (W - L - R) / (days.length - 1) : 0);
    };
    var y = function (v) { return T + (1 - Math.min(Math.max(v, 0), top) / top) * (H - T - B); };
    [0, 0.5, 1].forEach(function (v) {
      el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: v === 1 ? "#b00020" : "#ddd",
        "stroke-dasharray": v === 1 ? "4 3" : "none"}, svg);
      text(svg, L - 6, y(v) + 4, v === 1 ? "refill" : pct(v), "end");
    });
    days.forEach(function (d, i) {
      if (i % 7 === 0 || i === days.length - 1) { text(svg, x(i), H - 10, d.slice(5), "middle"); }
    });
    var legend = document.createElement("div");
    legend.className = "legend";
    ranked.forEach(function (policy, n) {
      var color = COLORS[n % COLORS.length];
      var rows = byPolicy[policy];
      var points = rows.map(function (r) {
        return x(days.indexOf(r.day)) + "," + y(r.peak_demand_share);
      });
      el("polyline", {points: points.join(" "), fill: "none", stroke: color,
        "stroke-width": 1.5}, svg);
      rows.forEach(function (r) {
        var dot = el("circle", {cx: x(days.indexOf(r.day)), cy: y(r.peak_demand_share), r: 3,
          fill: color, "class": "point", "data-policy": policy, "data-day": r.day,
          "data-value": r.peak_demand_share}, svg);
        tip(dot, policy + " " + r.day + ": peak demand " + pct(r.peak_demand_share) +
          " of the refill, 429s " + (r.throttled_429 === null ? "unknown" : r.throttled_429));
      });
      var item = document.createElement("span");
      item.innerHTML = '<i style="background:' + color + '"></i>';
      item.appendChild(document.createTextNode(policy));
      legend.appendChild(item);
    });
    host.appendChild(legend);
  }

  function profileChart() {
    var host = document.getElementById("profile-chart");
    if (!data.profile.length) { host.textContent = "No weekly profile stored yet."; return; }
    var days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    var C = 36, Hc = 22, L = 40, T = 18;
    var svg = el("svg", {width: L + 24 * C + 10, height: T + 7 * Hc + 10, role: "img"}, host);
    for (var h = 0; h < 24; h += 2) { text(svg, L + h * C + C / 2, 12, h + "h", "middle"); }
    days.forEach(function (d, i) { text(svg, 4, T + i * Hc + 15, d); });
    var top = Math.max(1, Math.max.apply(null, data.profile.map(function (c) {
      return c.typical_share || 0; })));
    data.profile.forEach(function (cell) {
      var v = cell.typical_share;
      var fill = v === null ? "#eee" :
        "hsl(" + Math.round(120 - 120 * Math.min(v / top, 1)) + ", 70%, " + (v > 1 ? 40 : 55) + "%)";
      var rect = el("rect", {x: L + cell.hour * C, y: T + Math.floor(cell.hour_of_week / 24) * Hc,
        width: C - 1, height: Hc - 1, fill: fill, "class": "cell",
        "data-how": cell.hour_of_week, "data-value": v === null ? "" : v}, svg);
      tip(rect, cell.weekday + " " + cell.hour + ":00: typical " +
        (v === null ? "no data" : pct(v)) + " of the refill, " + cell.weeks_seen + " weeks");
    });
  }

  function trendChart() {
    var host = document.getElementById("trend-chart");
    var o = data.outlook;
    if (!o || !o.weekly_peaks) { host.textContent = "No outlook stored yet."; return; }
    var used = o.weekly_peaks.filter(function (p) { return p.used; });
    if (!used.length) { host.textContent = "Not enough weeks of history for a trend."; return; }
    var asOf = Date.parse(o.as_of), WEEK = 7 * 864e5;
    var wk = function (iso) { return (Date.parse(iso) - asOf) / WEEK; };
    var last = o.first_429_at ? Math.max(wk(o.first_429_at) + 1, 4) : 13;
    var first = Math.min.apply(null, used.map(function (p) { return wk(p.at); }));
    var line = function (g, w) { return (o.weekly_peak_share || 0) * Math.pow(1 + g, w); };
    var top = Math.max(1.2, Math.max.apply(null, used.map(function (p) { return p.peak_share; })),
      Math.min(3, line(o.growth_per_week || 0, last)));
    var W = 940, H = 260, L = 50, R = 10, T = 10, B = 30;
    var svg = el("svg", {width: W, height: H, role: "img"}, host);
    var x = function (w) { return L + (w - first) / (last - first) * (W - L - R); };
    var y = function (v) { return T + (1 - Math.min(v, top) / top) * (H - T - B); };
    el("line", {x1: L, x2: W - R, y1: y(1), y2: y(1), stroke: "#b00020", "stroke-dasharray": "4 3",
      "class": "refill-line"}, svg);
    text(svg, L - 6, y(1) + 4, "refill", "end");
    text(svg, L - 6, y(0) + 4, "0", "end");
    text(svg, x(0), H - 10, "as of", "middle");
    if (o.growth_per_week !== null) {
      [[o.growth_low_per_week, "#bbb", "band"], [o.growth_high_per_week, "#bbb", "band"],
       [o.growth_per_week, "#1f77b4", "trend"]].forEach(function (spec) {
        var pts = [];
        for (var w = first; w <= last + 1e-9; w += (last - first) / 60) {
          pts.push(x(w) + "," + y(line(spec[0], w)));
        }
        el("polyline", {points: pts.join(" "), fill: "none", stroke: spec[1],
          "stroke-width": spec[2] === "trend" ? 2 : 1, "class": spec[2]}, svg);
      });
    }
    used.forEach(function (p) {
      var dot = el("circle", {cx: x(wk(p.at)), cy: y(p.peak_share), r: 4, fill: "#333",
        "class": "peak", "data-week": p.week_start, "data-value": p.peak_share}, svg);
      tip(dot, "week of " + p.week_start.slice(0, 10) + ": peak " + pct(p.peak_share));
    });
    if (o.first_429_at) {
      el("line", {x1: x(wk(o.first_429_at)), x2: x(wk(o.first_429_at)), y1: T, y2: H - B,
        stroke: "#b00020", "class": "first-429"}, svg);
      text(svg, x(wk(o.first_429_at)) - 4, T + 12, "first 429 " + o.first_429_at.slice(0, 10), "end");
    }
  }

  dailyChart();
  profileChart();
  trendChart();
  document.body.setAttribute("data-rendered", "true");
})();
