"use strict";
// Shared by the console's pages: fetch a fragment of a console page; a session that ended
// meanwhile sends the whole page to the sign-in form.
window.consoleFetch = async function consoleFetch(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (response.redirected && new URL(response.url).pathname.endsWith("/sign-in")) {
    window.location.assign(response.url);
    return null;
  }
  return response.ok ? response : null;
};
