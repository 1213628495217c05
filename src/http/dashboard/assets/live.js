// Keeps a page's current-period figures current: the element #live names its refresh address
// (data-src) and the digest of what it shows (data-digest). Each request waits on the server
// until the figures change (or a few seconds pass), then the element is replaced.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.src) {
    return;
  }
  var pause = 500;
  function next(delay) {
    window.setTimeout(refresh, delay);
  }
  function refresh() {
    var src = live.dataset.src;
    var url = src + (src.indexOf("?") < 0 ? "?" : "&") + "seen=" + encodeURIComponent(live.dataset.digest || "");
    fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("refresh answered " + response.status);
        }
        return response.json();
      })
      .then(function (figures) {
        if (figures.digest !== live.dataset.digest) {
          live.innerHTML = figures.html;
          live.dataset.digest = figures.digest;
          live.dataset.refreshes = String(Number(live.dataset.refreshes || "0") + 1);
        }
        live.removeAttribute("data-stale");
        next(pause);
      })
      .catch(function () {
        live.setAttribute("data-stale", "true");
        next(5000);
      });
  }
  next(pause);
})();
