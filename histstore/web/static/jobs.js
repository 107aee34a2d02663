// Refreshes the "Running now" table every 5 s from /api/jobs (runs marked running; 'interrupted' when their process is gone).
(function () {
  "use strict";
  const box = document.getElementById("jobs");
  if (!box) return;
  function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
  async function refresh() {
    let body;
    try { body = await (await fetch("/api/jobs")).json(); } catch (e) { return; }
    const title = box.querySelector("h2");
    box.textContent = ""; box.appendChild(title);
    if (!body.jobs.length) { const p = document.createElement("p"); p.className = "muted"; p.textContent = "No job is running."; box.appendChild(p); return; }
    const table = document.createElement("table"); table.className = "jobs";
    const head = table.createTHead().insertRow();
    for (const h of ["run", "kind", "cohort", "task", "model", "started", "state", "progress"]) { const th = document.createElement("th"); th.textContent = h; head.appendChild(th); }
    const tbody = table.createTBody();
    for (const j of body.jobs) {
      const tr = tbody.insertRow();
      const a = document.createElement("a"); a.href = "/runs/" + j.run_id; a.textContent = j.run_id;
      cell(tr, "", "num").appendChild(a);
      for (const k of ["kind", "cohort", "task", "model", "started_at", "state"]) cell(tr, j[k] == null ? "" : String(j[k]).replace("T", " ").slice(0, 19));
      const td = cell(tr, "");
      if (j.fraction != null) {
        const pr = document.createElement("progress"); pr.max = 1; pr.value = j.fraction; td.appendChild(pr);
      }
      td.appendChild(document.createTextNode(" " + (j.progress || "no progress recorded yet")));
    }
    box.appendChild(table);
  }
  setInterval(refresh, 5000);
})();
