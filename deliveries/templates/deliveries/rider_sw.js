// The rider page's service worker: keeps the page and its static files so the page opens without a network, marked as served from the cache.
// Network first (a fresh page and fresh scripts whenever there is a network), the cache only when the network fails.
// The API and the socket are never cached: the page keeps its own state and queue in IndexedDB.

const CACHE = "{{ cache_name }}";
const SHELL = {{ shell|safe }};
const PAGE = SHELL[0];
const STATIC = "{{ static_prefix }}"; // modules import each other by their plain names: keep whatever the page loads

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((name) => name !== CACHE).map((name) => caches.delete(name))))
      .then(() => self.clients.claim()),
  );
});

async function fromCache(request, isPage) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match(isPage ? PAGE : request, { ignoreVary: true, ignoreSearch: isPage });
  if (!cached || !isPage) return cached || Response.error();
  // Tell the page it is the cached copy, so it marks what it shows as possibly out of date.
  const text = (await cached.text()).replace('data-served="network"', 'data-served="cache"');
  return new Response(text, { status: 200, headers: { "Content-Type": "text/html; charset=utf-8" } });
}

async function networkFirst(request, isPage) {
  try {
    const response = await fetch(request);
    // A login redirect or an error page is not the rider page: keep the last good copy.
    if (response.ok && !response.redirected && response.type === "basic") {
      const cache = await caches.open(CACHE);
      await cache.put(isPage ? PAGE : request, response.clone());
    }
    return response;
  } catch {
    return fromCache(request, isPage);
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== location.origin) return;
  const isPage = request.mode === "navigate" && url.pathname === PAGE;
  if (isPage || url.pathname.startsWith(STATIC)) event.respondWith(networkFirst(request, isPage));
});
