"use strict";
// The live tail: asks for the events after the last one shown and puts them on top (newest
// first). The server holds the request until something new is committed (or a few seconds
// pass), so the page asks again at once; after an error it waits a little. Choosing an event
// type reloads the page filtered.
(function () {
  const table = document.getElementById("tail");
  const rows = document.getElementById("tail-rows");
  const state = document.getElementById("live-state");
  if (!table || !rows) return;
  const AFTER_ERROR_MS = 1000;
  const KEEP = 500;
  let cursor = table.dataset.cursor;
  const type = table.dataset.type;

  const select = document.getElementById("type");
  if (select) select.addEventListener("change", () => select.form.submit());

  async function poll() {
    let delay = 0;
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
      } else {
        delay = AFTER_ERROR_MS;
      }
    } catch (error) {
      if (state) state.textContent = "reconnecting…";
      delay = AFTER_ERROR_MS;
    } finally {
      window.setTimeout(poll, delay);
    }
  }

  window.setTimeout(poll, 0);
})();
