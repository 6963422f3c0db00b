// Fills the run report's event tables and log viewer from the JSON the page carries.
(function () {
  "use strict";
  var PAGE = 100;
  var data = JSON.parse(document.getElementById("dj-data").textContent);

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // a table with a filter function, a search box and pages of PAGE rows
  function pagedTable(root, columns, rows, controls, rowOf, textOf) {
    var search = el("input", {type: "search", placeholder: "search"});
    var count = el("span", {"class": "count"});
    var pager = el("span", {"class": "pager"});
    var bar = el("div", {"class": "controls"});
    controls.forEach(function (c) { bar.appendChild(c.node); });
    bar.appendChild(search); bar.appendChild(count); bar.appendChild(pager);
    var table = el("table", {"class": "rows"});
    root.appendChild(bar); root.appendChild(table);
    var page = 0, shown = rows;

    function draw() {
      table.textContent = "";
      var head = el("tr");
      columns.forEach(function (c) { head.appendChild(el("th", {}, c)); });
      table.appendChild(head);
      var pages = Math.max(1, Math.ceil(shown.length / PAGE));
      page = Math.min(page, pages - 1);
      shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (r) { table.appendChild(rowOf(r)); });
      count.textContent = shown.length + " of " + rows.length + " rows";
      pager.textContent = "";
      if (pages > 1) {
        var prev = el("button", {type: "button"}, "‹ previous");
        var next = el("button", {type: "button"}, "next ›");
        prev.disabled = page === 0; next.disabled = page >= pages - 1;
        prev.onclick = function () { page -= 1; draw(); };
        next.onclick = function () { page += 1; draw(); };
        pager.appendChild(prev);
        pager.appendChild(el("span", {}, " page " + (page + 1) + " of " + pages + " "));
        pager.appendChild(next);
      }
    }
    function filter() {
      var q = search.value.toLowerCase();
      shown = rows.filter(function (r) {
        for (var i = 0; i < controls.length; i++) if (!controls[i].keep(r)) return false;
        return !q || textOf(r).toLowerCase().indexOf(q) >= 0;
      });
      page = 0; draw();
    }
    search.addEventListener("input", filter);
    controls.forEach(function (c) { c.node.addEventListener("change", filter); });
    filter();
  }

  function select(label, options) {
    var s = el("select", {"aria-label": label});
    options.forEach(function (o) { s.appendChild(el("option", {value: o[0]}, o[1])); });
    return s;
  }

  function eventTable(root, rows) {
    var counts = {};
    rows.forEach(function (r) { counts[r.topic] = (counts[r.topic] || 0) + 1; });
    var topics = Object.keys(counts).sort(function (a, b) { return counts[b] - counts[a]; });
    var topic = select("topic", [["", "every topic"]].concat(topics.map(function (t) {
      return [t, t + " (" + counts[t] + ")"];
    })));
    if (!rows.length) { root.appendChild(el("p", {"class": "none"}, "none")); return; }
    pagedTable(root, ["t (s)", "topic", "worker", "data"], rows,
      [{node: topic, keep: function (r) { return !topic.value || r.topic === topic.value; }}],
      function (r) {
        var tr = el("tr");
        tr.appendChild(el("td", {}, r.t.toFixed(3)));
        tr.appendChild(el("td", {}, r.topic));
        tr.appendChild(el("td", {}, r.worker));
        tr.appendChild(el("td", {"class": "data"}, r.data));
        return tr;
      },
      function (r) { return r.topic + " " + r.worker + " " + r.data; });
  }

  var RANK = {"": 0, DEBUG: 1, INFO: 2, WARNING: 3, ERROR: 4, CRITICAL: 5};

  function logViewer(root, files) {
    if (!files.length) { root.appendChild(el("p", {"class": "none"}, "no log files")); return; }
    var rows = [];
    files.forEach(function (f) {
      f.lines.forEach(function (l) { rows.push({file: f.name, n: l[0], level: l[1], text: l[2]}); });
    });
    var source = select("log file", [["", "every file"]].concat(files.map(function (f) {
      return [f.name, f.name + " (" + f.total + " lines" + (f.crashed ? ", worker died" : "") + ")"];
    })));
    var level = select("level", [["0", "every level"], ["2", "INFO and above"],
                                 ["3", "WARNING and above"], ["4", "ERROR and above"]]);
    pagedTable(root, ["file", "line", "text"], rows, [
      {node: source, keep: function (r) { return !source.value || r.file === source.value; }},
      {node: level, keep: function (r) { return (RANK[r.level] || 0) >= Number(level.value); }}
    ], function (r) {
      var tr = el("tr", {"class": r.level});
      tr.appendChild(el("td", {}, r.file));
      tr.appendChild(el("td", {}, String(r.n)));
      tr.appendChild(el("td", {"class": "line"}, r.text));
      return tr;
    }, function (r) { return r.file + " " + r.text; });
  }

  document.querySelectorAll("[data-events]").forEach(function (root) {
    eventTable(root, data.events[root.getAttribute("data-events")] || []);
  });
  document.querySelectorAll(".log-tool").forEach(function (root) { logViewer(root, data.logs); });
})();
