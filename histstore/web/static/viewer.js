// The slide viewer: OpenSeadragon over the server's DZI tiles, with two overlay images
// (a run's attention, a tiling's tiles) stretched over the whole slide, a tile inspector and
// the run's most attended tiles. Sets data-slide-ready / data-overlay-ready on <html> once the
// slide's and the attention overlay's tiles are drawn (the browser test waits for them).
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("viewer-config").textContent);
  const $ = (id) => document.getElementById(id);
  const root = document.documentElement;
  const state = { slide: null, attention: null, tiling: null, highlight: null, info: null };

  const viewer = OpenSeadragon({
    id: "osd", prefixUrl: cfg.prefix, tileSources: cfg.dzi, showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 2, visibilityRatio: 0.5,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    // 2-D canvas: WebGL would fall back to a slow software rasteriser on machines without a GPU
    drawer: "canvas",
  });

  function whenDrawn(item, flag) {
    const mark = () => { root.dataset[flag] = "1"; };
    if (item.getFullyLoaded && item.getFullyLoaded()) { mark(); return; }
    item.addHandler("fully-loaded-change", (e) => { if (e.fullyLoaded) mark(); });
  }

  viewer.addOnceHandler("open", () => {
    state.slide = viewer.world.getItemAt(0);
    whenDrawn(state.slide, "slideReady");
    initControls();
  });

  // ---------------------------------------------------------------- overlays
  function opacity() { return parseFloat($("opacity").value); }

  function setOverlay(which, url, flag) {
    if (state[which]) { viewer.world.removeItem(state[which]); state[which] = null; }
    if (flag) delete root.dataset[flag];
    if (!url) return;
    viewer.addTiledImage({
      tileSource: { type: "image", url: url, buildPyramid: false },
      x: 0, y: 0, width: 1, opacity: opacity(),
      success: (e) => {
        state[which] = e.item;
        if (flag) whenDrawn(e.item, flag);
      },
      error: () => { if (flag) root.dataset[flag] = "error"; },
    });
  }

  $("opacity").addEventListener("input", () => {
    for (const k of ["attention", "tiling"]) if (state[k]) state[k].setOpacity(opacity());
  });

  // ---------------------------------------------------------------- controls
  function option(sel, value, text) {
    const o = document.createElement("option");
    o.value = String(value); o.textContent = text; sel.appendChild(o);
  }

  function currentRun() {
    const id = parseInt($("run").value, 10);
    return cfg.runs.find((r) => r.run_id === id) || null;
  }

  function attentionRunId() {
    const run = currentRun();
    if (!run) return null;
    return run.genes.length ? parseInt($("gene").value, 10) : run.run_id;
  }

  function foldsOf() {
    const run = currentRun();
    if (!run) return [];
    if (!run.genes.length) return run.folds;
    const g = run.genes.find((x) => x.run_id === parseInt($("gene").value, 10));
    return g ? g.folds : [];
  }

  function fillFolds(wanted) {
    const sel = $("fold"); sel.textContent = "";
    for (const f of foldsOf()) option(sel, f, "fold " + f + " (test)");
    if (wanted != null && foldsOf().includes(wanted)) sel.value = String(wanted);
  }

  function fillGenes(wanted) {
    const run = currentRun(), sel = $("gene"); sel.textContent = "";
    $("gene-row").hidden = !(run && run.genes.length);
    if (!run) return;
    for (const g of run.genes) option(sel, g.run_id, g.task + " (run " + g.run_id + ")");
    if (wanted != null && run.genes.some((g) => g.run_id === wanted)) sel.value = String(wanted);
  }

  function initControls() {
    const runSel = $("run");
    if (!cfg.runs.length) { option(runSel, "", "no run tested this slide"); runSel.disabled = true; }
    for (const r of cfg.runs) option(runSel, r.run_id, r.label);
    if (cfg.initial.run != null && cfg.runs.some((r) => r.run_id === cfg.initial.run)) runSel.value = String(cfg.initial.run);
    for (const t of cfg.tilings) option($("tiling"), t.tiling_id, t.label);
    if (!cfg.tilings.length) { $("show-tiling").disabled = true; }
    fillGenes(cfg.initial.gene);
    fillFolds(cfg.initial.fold);
    $("colourbar").style.background = "linear-gradient(to right, " + cfg.colours.join(", ") + ")";
    runSel.addEventListener("change", () => { fillGenes(null); fillFolds(null); loadAttention(); });
    $("gene").addEventListener("change", () => { fillFolds(null); loadAttention(); });
    $("fold").addEventListener("change", loadAttention);
    $("norm").addEventListener("change", loadAttention);
    $("show-attention").addEventListener("change", loadAttention);
    $("show-tiling").addEventListener("change", loadTiling);
    $("tiling").addEventListener("change", loadTiling);
    loadAttention();
  }

  function remember() {
    const p = new URLSearchParams();
    const run = currentRun();
    if (run) {
      p.set("run", run.run_id);
      if (run.genes.length) p.set("gene", $("gene").value);
      if ($("fold").value) p.set("fold", $("fold").value);
    }
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error + (body.hint ? " (" + body.hint + ")" : ""));
    return body;
  }

  function fmt(v) { return typeof v === "number" ? (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : +v.toPrecision(4)) : String(v); }

  async function loadAttention() {
    remember();
    const rid = attentionRunId(), fold = $("fold").value;
    $("top-tiles").textContent = "";
    if (!$("show-attention").checked || rid == null || Number.isNaN(rid) || fold === "") {
      setOverlay("attention", null, "overlayReady");
      state.info = null;
      $("attention-info").textContent = rid == null ? "No run tested this slide." : "";
      return;
    }
    let info;
    try {
      info = await getJSON(cfg.api + "/attention?run=" + rid + "&fold=" + fold);
    } catch (err) {
      $("attention-info").textContent = err.message;
      root.dataset.overlayReady = "error";
      return;
    }
    state.info = info;
    const norm = $("norm").value;
    setOverlay("attention", info.overlay + "&norm=" + norm, "overlayReady");
    $("cb-lo").textContent = norm === "percentile" ? "0%" : fmt(info.min);
    $("cb-hi").textContent = norm === "percentile" ? "100%" : fmt(info.max);
    const p = info.prediction;
    let text = info.label + "; " + info.n_tiles + " tiles, fold " + info.fold + ".";
    if (p) text += " Predicted " + (p.predicted != null ? p.predicted : fmt(p.score)) + " (score " + fmt(p.score) + "), true " + (p.label != null ? p.label : fmt(p.target)) + ".";
    $("attention-info").textContent = text;
    for (const t of info.top) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "#"; a.textContent = "tile " + t.tile_id + " · " + fmt(t.score) + " (" + t.x + ", " + t.y + ")";
      a.addEventListener("click", (e) => { e.preventDefault(); jumpTo(t); inspect(t.x + t.size_l0 / 2, t.y + t.size_l0 / 2); });
      li.appendChild(a); $("top-tiles").appendChild(li);
    }
  }

  function loadTiling() {
    const on = $("show-tiling").checked && $("tiling").value !== "";
    setOverlay("tiling", on ? cfg.api + "/tilings/" + $("tiling").value + "/overlay.png" : null, null);
  }

  // ---------------------------------------------------------------- tiles under the pointer
  function highlight(t) {
    if (state.highlight) viewer.removeOverlay(state.highlight);
    const el = document.createElement("div");
    el.className = "tile-highlight";
    viewer.addOverlay({ element: el, location: state.slide.imageToViewportRectangle(t.x, t.y, t.size_l0, t.size_l0) });
    state.highlight = el;
  }

  function jumpTo(t) {
    const s = t.size_l0;
    viewer.viewport.fitBounds(state.slide.imageToViewportRectangle(t.x - 2 * s, t.y - 2 * s, 5 * s, 5 * s));
    highlight(t);
  }

  function showTile(t) {
    const box = $("tile-info");
    box.classList.remove("muted"); box.textContent = "";
    const rows = [["tile_id", t.tile_id], ["level-0 x, y", t.x + ", " + t.y], ["size (level-0 px)", t.size_l0]];
    if (t.tissue_fraction != null) rows.push(["tissue fraction", fmt(t.tissue_fraction)]);
    if (t.score != null) {
      rows.push(["attention", fmt(t.score)]);
      if (t.score_norm != null) rows.push(["min-max in slide", fmt(t.score_norm)]);
      if (t.rank_in_slide != null) rows.push(["rank", t.rank_in_slide + (t.n_tiles ? " of " + t.n_tiles : "")]);
    }
    const dl = document.createElement("dl");
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = String(v); dl.appendChild(dt); dl.appendChild(dd);
    }
    box.appendChild(dl);
    highlight(t);
  }

  viewer.addHandler("canvas-click", (e) => {
    if (!e.quick || !state.slide) return;
    e.preventDefaultAction = true;
    const p = state.slide.viewportToImageCoordinates(viewer.viewport.pointFromPixel(e.position));
    inspect(p.x, p.y);
  });

  // the tile under level-0 point (x, y): of the shown attention, else of the chosen tiling
  async function inspect(x, y) {
    let url = cfg.api + "/tile-at?x=" + x.toFixed(1) + "&y=" + y.toFixed(1);
    const rid = attentionRunId();
    if ($("show-attention").checked && rid != null && !Number.isNaN(rid) && $("fold").value !== "") {
      url += "&run=" + rid + "&fold=" + $("fold").value;
    } else if ($("tiling").value !== "") {
      url += "&tiling=" + $("tiling").value;
    }
    try {
      const body = await getJSON(url);
      if (body.tile) showTile(body.tile);
      else { $("tile-info").textContent = "No tile at (" + Math.round(x) + ", " + Math.round(y) + ")."; }
    } catch (err) { $("tile-info").textContent = err.message; }
  }
})();
