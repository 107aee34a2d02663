// Grows the report's frame to the report's own height (same origin), so the page scrolls once.
(function () {
  "use strict";
  const frame = document.getElementById("report");
  if (!frame) return;
  const fit = () => {
    try { frame.style.height = (frame.contentDocument.documentElement.scrollHeight + 24) + "px"; } catch (e) { /* keep the default */ }
  };
  frame.addEventListener("load", () => { fit(); for (const img of frame.contentDocument.images) img.addEventListener("load", fit); });
})();
