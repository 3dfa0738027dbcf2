"use strict";
// The live tail: asks for the events after the last one shown, twice a second, and puts
// them on top (newest first). Choosing an event type reloads the page filtered.
(function () {
  const table = document.getElementById("tail");
  const rows = document.getElementById("tail-rows");
  const state = document.getElementById("live-state");
  if (!table || !rows) return;
  const EVERY_MS = 500;
  const KEEP = 500;
  let cursor = table.dataset.cursor;
  const type = table.dataset.type;

  const select = document.getElementById("type");
  if (select) select.addEventListener("change", () => select.form.submit());

  async function poll() {
    try {
      const url = `${table.dataset.source}?after=${encodeURIComponent(cursor)}&type=${encodeURIComponent(type)}`;
      const response = await window.consoleFetch(url);
      if (response) {
        cursor = response.headers.get("X-Console-Cursor") || cursor;
        const html = (await response.text()).trim();
        if (html) {
          rows.insertAdjacentHTML("afterbegin", html);
          while (rows.rows.length > KEEP) rows.deleteRow(rows.rows.length - 1);
        }
        if (state) state.textContent = "live";
      }
    } catch (error) {
      if (state) state.textContent = "reconnecting…";
    } finally {
      window.setTimeout(poll, EVERY_MS);
    }
  }

  window.setTimeout(poll, EVERY_MS);
})();
