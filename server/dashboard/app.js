// essl-relay dashboard: one plain script, no framework, no build step, no external URL.
//
// Rules this file keeps (the server's CSP and the browser tests depend on them):
// - Data from terminals and users is hostile: the DOM is built with createElement/textContent/setAttribute only
//   (the `h()` helper below), never from HTML strings.
// - Every promise rejection is caught and shown in the page, so normal use logs nothing to the console.
// - The DOM hooks listed in notes/dashboard-contract.md (ids, data-* attributes) are stable; keep them.
'use strict';

(() => {
  // ---------------------------------------------------------------------------------------------------------------
  // DOM helpers
  // ---------------------------------------------------------------------------------------------------------------

  const $ = (selector, root = document) => root.querySelector(selector);

  /** Appends children (nodes, strings, numbers, nested arrays; null/false are skipped) to `el`. */
  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /**
   * Creates an element. `attrs`: `class`, `on<event>` (functions only: listeners, never attributes), booleans
   * (true: present, false/null: absent), anything else through setAttribute. Children become text nodes.
   */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith('on')) {
        if (typeof value === 'function') el.addEventListener(key.slice(2), value);
      } else if (key === 'class') {
        el.className = value;
      } else {
        el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    return append(el, children);
  }

  /** Replaces the content of `el` with `children`. */
  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  /** Shows `text` in `el`, or hides `el` when there is none. */
  function setMessage(el, text) {
    el.textContent = text || '';
    el.hidden = !text;
  }

  function badge(text, kind, title) {
    return h('span', { class: `badge badge-${kind}`, title }, text);
  }

  const dash = () => h('span', { class: 'muted' }, '—');

  // ---------------------------------------------------------------------------------------------------------------
  // Formatting
  // ---------------------------------------------------------------------------------------------------------------

  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

  function parseInstant(iso) {
    if (!iso) return null;
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function formatAbsolute(date) {
    return dateTimeFormat.format(date);
  }

  /** "12 s ago", "5 min ago", "3 h ago", "2 d ago" (or "in ..." for the future, beyond a little clock skew). */
  function formatRelative(date, now = Date.now()) {
    let seconds = Math.round((now - date.getTime()) / 1000);
    if (seconds < 0 && seconds > -60) seconds = 0; // clocks of server and browser differ a little
    const abs = Math.abs(seconds);
    let span;
    if (abs < 60) span = `${abs} s`;
    else if (abs < 3600) span = `${Math.floor(abs / 60)} min`;
    else if (abs < 86400) span = `${Math.floor(abs / 3600)} h`;
    else span = `${Math.floor(abs / 86400)} d`;
    return seconds >= 0 ? `${span} ago` : `in ${span}`;
  }

  /** A <time> element: absolute text, or relative text that the ticker keeps current, the other in its title. */
  function timeEl(iso, { relative = false } = {}) {
    const date = parseInstant(iso);
    if (!date) return dash();
    const el = h('time', { datetime: date.toISOString() });
    if (relative) {
      el.setAttribute('data-relative', '');
      el.title = formatAbsolute(date);
      el.textContent = formatRelative(date);
    } else {
      el.title = formatRelative(date);
      el.textContent = formatAbsolute(date);
    }
    return el;
  }

  /** Keeps every relative time of the visible page current. */
  function tickRelativeTimes() {
    const page = currentPage && pageSection(currentPage);
    if (!page || page.hidden) return;
    const now = Date.now();
    for (const el of page.querySelectorAll('time[data-relative]')) {
      const date = parseInstant(el.getAttribute('datetime'));
      if (date) el.textContent = formatRelative(date, now);
    }
  }

  const plural = (n, one, many) => (n === 1 ? one : many);

  function formatMs(ms) {
    if (ms === null || ms === undefined) return '—';
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  const shortId = (id) => String(id || '').slice(0, 8);

  // ---------------------------------------------------------------------------------------------------------------
  // API
  // ---------------------------------------------------------------------------------------------------------------

  const SESSION_URL = '/api/session';
  const SAFE_METHODS = new Set(['GET', 'HEAD']);

  class ApiError extends Error {
    constructor(status, code, message, body) {
      super(message);
      this.status = status;
      this.code = code;
      this.body = body; // the parsed answer, e.g. the 502 of a failed sync carries stats and error
      this.expired = false; // true once the login form took over: callers then show nothing
    }
  }

  async function readBody(res) {
    if (res.status === 204) return null;
    const type = res.headers.get('content-type') || '';
    if (type.includes('json')) return res.json().catch(() => null);
    await res.text().catch(() => '');
    return null;
  }

  function errorFrom(res, body) {
    const error = body && typeof body.error === 'object' && body.error ? body.error : null;
    const code = (error && error.code) || '';
    let message = (body && typeof body.message === 'string' && body.message) || (error && error.message) || '';
    if (res.status === 403 && code === 'csrf' && session.csrf) {
      message = 'The page is out of date (security token). Reload the page and try again.';
    } else if (res.status === 403 && !message) {
      message = 'Your account is not allowed to do this.';
    } else if (!message) {
      message = `The server answered ${res.status}${res.statusText ? ` ${res.statusText}` : ''}.`;
    }
    return new ApiError(res.status, code, message, body);
  }

  /**
   * One JSON request. Cookie session plus the CSRF header on every state-changing method. A 401 anywhere but on
   * /api/session itself means the session is gone: the login form comes back and the error is marked `expired`.
   */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    if (!SAFE_METHODS.has(method) && session.csrf) headers['X-CSRF-Token'] = session.csrf;
    let res;
    try {
      res = await fetch(path, init);
    } catch {
      throw new ApiError(0, 'network', 'The server did not answer. Check the connection and try again.', null);
    }
    const data = await readBody(res);
    if (res.ok) return data;
    const err = errorFrom(res, data);
    if (res.status === 401 && path !== SESSION_URL) {
      sessionExpired();
      err.expired = true;
    }
    throw err;
  }

  /** A path with a query string; empty values are left out. */
  function withQuery(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== '') query.set(key, String(value));
    }
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Shared data: devices and agents are used by several pages (names, selects)
  // ---------------------------------------------------------------------------------------------------------------

  const session = { user: null, csrf: null };
  const isAdmin = () => Boolean(session.user && session.user.role === 'admin');

  const cache = {
    deviceById: new Map(),
    agentById: new Map(),
    /** Push terminals by serial number (admins only: the list is an admin route). */
    pushBySerial: new Map(),
    deviceOptionsKey: '',
  };

  async function fetchDevices() {
    const data = await api('GET', '/api/devices');
    const items = (data && data.items) || [];
    cache.deviceById = new Map(items.map((d) => [d.id, d]));
    updateDeviceSelects(items);
    return items;
  }

  async function fetchAgents() {
    const data = await api('GET', '/api/agents');
    const items = (data && data.items) || [];
    cache.agentById = new Map(items.map((a) => [a.id, a]));
    return items;
  }

  /** Agents for pages that only need their names: a staff account may not list them, which is fine there. */
  function fetchAgentsQuietly() {
    return fetchAgents().catch((e) => {
      if (e.expired) throw e;
      return null;
    });
  }

  async function fetchPushTerminals() {
    const data = await api('GET', '/api/push/terminals');
    const items = (data && data.items) || [];
    cache.pushBySerial = new Map(items.map((t) => [t.serialNumber, t]));
    return items;
  }

  /** Push terminals for the devices page: asked only by admins (staff may not list them), failures are quiet. */
  function fetchPushQuietly() {
    if (!isAdmin()) return Promise.resolve(null);
    return fetchPushTerminals().catch((e) => {
      if (e.expired) throw e;
      return null;
    });
  }

  const deviceName = (id) => {
    const d = cache.deviceById.get(id);
    return d ? d.name : `device ${shortId(id)}`;
  };

  /** Refills the device filter selects, only when the list changed (an open select must not close under the user). */
  function updateDeviceSelects(devices) {
    const sorted = [...devices].sort((a, b) => a.name.localeCompare(b.name));
    const key = JSON.stringify(sorted.map((d) => [d.id, d.name]));
    if (key === cache.deviceOptionsKey) return;
    cache.deviceOptionsKey = key;
    for (const select of [$('#f-device'), $('#h-device')]) {
      const chosen = select.value;
      fill(select, h('option', { value: '' }, 'All devices'), sorted.map((d) => h('option', { value: d.id }, d.name)));
      select.value = sorted.some((d) => d.id === chosen) ? chosen : '';
    }
  }

  /**
   * Keyed table rendering: rows stay the same elements across refreshes, so focus, live regions and in-flight sync
   * states survive the live updates. `build(item)` makes a row once, `update(row, item)` refreshes its cells.
   */
  const rowMaps = new WeakMap();

  function renderRows(tbody, items, keyOf, build, update) {
    let rows = rowMaps.get(tbody);
    if (!rows) rowMaps.set(tbody, (rows = new Map()));
    const keep = new Set();
    items.forEach((item, index) => {
      const key = keyOf(item);
      keep.add(key);
      let row = rows.get(key);
      if (!row) {
        row = build(item);
        rows.set(key, row);
      }
      update(row, item);
      const there = tbody.children[index];
      if (there !== row) tbody.insertBefore(row, there || null);
    });
    for (const [key, row] of rows) {
      if (!keep.has(key)) {
        row.remove();
        rows.delete(key);
      }
    }
  }

  function clearRows(tbody) {
    tbody.replaceChildren();
    rowMaps.delete(tbody);
  }

  /** A row with one labelled cell per column (the labels show in the phone card layout). */
  function emptyRow(attrs, labels) {
    return h('tr', attrs, labels.map((label) => h('td', { 'data-label': label })));
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Pages: shared plumbing
  // ---------------------------------------------------------------------------------------------------------------

  const PAGE_TITLES = {
    agents: 'Agents',
    devices: 'Devices',
    history: 'Sync history',
    attendance: 'Attendance',
    admin: 'Admin',
  };

  let currentPage = null;

  const pageSection = (name) => document.getElementById(`page-${name}`);

  function showPageError(name, err) {
    if (err && err.expired) return; // the login form says it already
    setMessage($('.page-error', pageSection(name)), err ? err.message : '');
  }

  /**
   * Wraps a page's loader: only the latest call renders (live events can overlap), errors land in the page.
   */
  function refresher(name, load, render) {
    let latest = 0;
    return async () => {
      const mine = ++latest;
      try {
        const data = await load();
        if (mine !== latest || !session.user) return;
        showPageError(name, null);
        render(data);
      } catch (err) {
        if (mine === latest) showPageError(name, err);
      }
    };
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Agents page
  // ---------------------------------------------------------------------------------------------------------------

  const AGENT_COLUMNS = ['Name', 'Site', 'Status', 'Version', 'Host', 'Connected since', 'Last heartbeat', 'Terminals'];

  /**
   * Each agent's outbox fill (records read from terminals, not yet stored by the server): `{bytes, limitBytes,
   * pendingRecords}` or null. The agents list's `outbox` is the base; `agent.outbox` events update it in between.
   */
  const outboxes = new Map();

  /** From this share of its bound on, an agent's outbox is shown as a warning (the agent itself warns at 80 %). */
  const OUTBOX_WARNING = 0.8;

  function outboxFromList(value) {
    if (!value || typeof value !== 'object') return null;
    return {
      bytes: Number(value.bytes) || 0,
      limitBytes: Number(value.limitBytes) || 0,
      pendingRecords: typeof value.pendingRecords === 'number' ? value.pendingRecords : null,
    };
  }

  /** The outbox figure of an agent row: a warning badge when nearly full, otherwise the plain figure. */
  function outboxView(outbox) {
    if (!outbox || !(outbox.limitBytes > 0)) return null;
    const figure = `${formatBytes(outbox.bytes)} of ${formatBytes(outbox.limitBytes)}`;
    const pending =
      outbox.pendingRecords === null || outbox.pendingRecords === undefined
        ? ''
        : `; ${outbox.pendingRecords} ${plural(outbox.pendingRecords, 'record', 'records')} waiting`;
    if (outbox.bytes >= outbox.limitBytes * OUTBOX_WARNING) {
      const percent = Math.min(100, Math.floor((outbox.bytes / outbox.limitBytes) * 100));
      return h(
        'div',
        { class: 'small' },
        h(
          'span',
          {
            class: 'badge badge-cached',
            'data-field': 'outbox-warning',
            title:
              `Outbox ${figure}${pending}. When it is full the agent stops reading terminals (their records stay on ` +
              'them) until the server stores what is queued: check the server and its database.',
          },
          `outbox ${percent}% full`,
        ),
      );
    }
    return h('div', { class: 'small muted', 'data-field': 'outbox', title: pending ? `Outbox${pending}` : null }, `outbox ${figure}`);
  }

  const agentStatus = (a) => (a.revoked ? 'revoked' : a.connected ? 'connected' : 'offline');

  function buildAgentRow(a) {
    return emptyRow({ 'data-agent-id': a.id }, AGENT_COLUMNS);
  }

  function updateAgentRow(row, a) {
    const [name, site, status, version, host, since, seen, terminals] = row.cells;
    const state = agentStatus(a);
    fill(name, h('strong', {}, a.name));
    fill(site, a.site || dash());
    // The status cell holds the bare word (tests read its text); the outbox figure goes with the host.
    status.setAttribute('data-field', 'status');
    fill(status, badge(state, state));
    fill(version, a.version || dash());
    fill(host, a.hostname || dash(), a.os ? h('div', { class: 'small muted' }, a.os) : null, outboxView(outboxes.get(a.id)));
    fill(since, timeEl(a.connectedSince));
    fill(seen, timeEl(a.lastSeen, { relative: true }));
    fill(terminals, reachList(a.devices || []));
  }

  function reachList(reaches) {
    if (!reaches.length) return dash();
    const sorted = [...reaches].sort((x, y) => deviceName(x.deviceId).localeCompare(deviceName(y.deviceId)));
    return h(
      'ul',
      { class: 'plain' },
      sorted.map((r) =>
        h(
          'li',
          { title: r.checkedAt ? `checked ${formatAbsolute(parseInstant(r.checkedAt) || new Date())}` : null },
          h('span', {}, deviceName(r.deviceId)),
          ' ',
          r.reachable
            ? badge(formatMs(r.rttMs), 'ok', 'Round-trip time of the latest probe')
            : badge('unreachable', 'failed', r.error || 'The latest probe failed'),
        ),
      ),
    );
  }

  const refreshAgents = refresher(
    'agents',
    async () => {
      const [agents] = await Promise.all([fetchAgents(), fetchDevices().catch((e) => (e.expired ? Promise.reject(e) : null))]);
      return agents;
    },
    (agents) => {
      for (const a of agents) outboxes.set(a.id, outboxFromList(a.outbox));
      const sorted = [...agents].sort((a, b) => Number(a.revoked) - Number(b.revoked) || a.name.localeCompare(b.name));
      renderRows($('#agents-body'), sorted, (a) => a.id, buildAgentRow, updateAgentRow);
      $('#agents-empty').hidden = sorted.length > 0;
    },
  );

  // ---------------------------------------------------------------------------------------------------------------
  // Devices page, with the seed's sync flow: checking -> syncing -> completed | cached | error
  // ---------------------------------------------------------------------------------------------------------------

  const DEVICE_COLUMNS = ['Name', 'Address', 'Site', 'Reachable', 'Last sync', 'Records', 'Sync'];

  const OFFLINE_TIP =
    'The terminal is not reachable from any connected agent. Check that the office agent is running and the terminal is on.';

  /** Sync runs started from this page, per device: { state, busy, ...answer fields }. */
  const syncRuns = new Map();
  /** The persistent button and state element of each device row. */
  const syncUi = new Map();
  /** Latest `sync.progress` per device: { done, total }. */
  const progress = new Map();

  function buildDeviceRow(d) {
    const row = emptyRow({ 'data-device-id': d.id }, DEVICE_COLUMNS);
    const button = h(
      'button',
      { type: 'button', class: 'btn btn-small', 'data-action': 'sync', onclick: () => startSync(d.id, button) },
      'Sync',
    );
    // role=status makes it a polite live region: screen readers hear each state as it comes.
    const stateEl = h('div', { class: 'sync-state', 'data-sync-state': 'idle', role: 'status', 'aria-atomic': 'true' });
    fill(row.cells[6], button, stateEl);
    syncUi.set(d.id, { button, stateEl });
    renderSync(d.id);
    return row;
  }

  function updateDeviceRow(row, d) {
    const [name, address, site, reachable, lastSync, records] = row.cells;
    fill(name, h('strong', { 'data-field': 'name' }, d.name), d.active === false ? [' ', badge('inactive', 'muted')] : null);
    if (d.kind === 'push') {
      fill(
        address,
        h('span', { class: 'badge badge-muted', 'data-field': 'kind', title: 'The terminal calls the server itself (ADMS push): no agent' }, 'push'),
        ' ',
        h('span', { class: 'mono' }, d.serialNumber || d.ipAddress || ''),
        pushDetails(d, cache.pushBySerial.get(d.serialNumber)),
      );
    } else {
      fill(address, h('span', { class: 'mono' }, `${d.ipAddress}:${d.port}`), d.transport === 'udp' ? ' (UDP)' : null);
    }
    fill(site, d.site || dash());
    fill(reachable, reachCell(d));
    fill(lastSync, lastSyncCell(d));
    fill(records, h('span', { 'data-field': 'records' }, String(d.recordCount ?? 0)));
    syncUi.get(d.id).button.setAttribute('aria-label', `Sync ${d.name}`);
  }

  function agentName(via) {
    if (via.agentName) return via.agentName;
    const agent = cache.agentById.get(via.agentId);
    return agent ? agent.name : `agent ${shortId(via.agentId)}`;
  }

  const DIALECTS = {
    att: 'attendance PUSH (2.x): ATTLOG uploads',
    acc: 'security PUSH (3.x): registry, rtlog',
  };

  /**
   * What a push terminal reported: dialect and firmware from the device itself (everyone reads them), pending
   * commands from the push terminals list `t` (admins only: the command queue is an admin route).
   */
  function pushDetails(d, t) {
    const pending = t ? Number(t.pendingCommands) || 0 : null;
    if (!d.pushDialect && !d.firmware && pending === null) return null;
    return h(
      'div',
      { class: 'small muted push-details' },
      d.pushDialect
        ? h(
            'div',
            {},
            'dialect ',
            h('span', { 'data-field': 'dialect', title: DIALECTS[d.pushDialect] || null }, d.pushDialect),
            d.pushVersion ? h('span', { 'data-field': 'push-version' }, ` ${d.pushVersion}`) : null,
          )
        : null,
      d.firmware ? h('div', {}, 'firmware ', h('span', { 'data-field': 'firmware' }, d.firmware)) : null,
      pending === null
        ? null
        : h(
            'div',
            { title: 'Commands queued for the terminal, or sent and not answered yet' },
            h('span', { 'data-field': 'pending-commands' }, String(pending)),
            ` ${plural(pending, 'command', 'commands')} pending`,
          ),
    );
  }

  function reachCell(d) {
    if (d.kind === 'push') {
      return [
        d.reachable
          ? badge('yes', 'ok', 'It called within three poll intervals')
          : badge('no', 'failed', 'It has not called within three poll intervals'),
        h(
          'div',
          { class: 'small muted' },
          d.lastContact
            ? ['last call ', h('span', { 'data-field': 'last-contact' }, timeEl(d.lastContact, { relative: true }))]
            : h('span', { 'data-field': 'last-contact' }, 'never called'),
        ),
      ];
    }
    const via = d.reachableVia || [];
    if (!d.reachable || !via.length) return badge('no', 'failed', 'No connected agent reaches it now');
    return [
      badge('yes', 'ok'),
      ' via ',
      via.map((v, i) => [
        i ? ', ' : '',
        h('span', { class: 'via' }, agentName(v)),
        v.rttMs !== null && v.rttMs !== undefined ? h('span', { class: 'muted rtt' }, ` (${formatMs(v.rttMs)})`) : null,
      ]),
    ];
  }

  const SYNC_STATUS_BADGE = { success: 'ok', failed: 'failed', in_progress: 'checking' };

  function lastSyncCell(d) {
    if (!d.lastSyncTime && !d.lastSyncStatus) return h('span', { class: 'muted' }, 'never');
    const status = d.lastSyncStatus;
    const p = progress.get(d.id);
    return [
      status ? badge(status.replace('_', ' '), SYNC_STATUS_BADGE[status] || 'muted') : null,
      ' ',
      timeEl(d.lastSyncTime, { relative: true }),
      status === 'in_progress' && p ? h('div', { class: 'small muted' }, `${p.done} of ${p.total || '?'} records`) : null,
    ];
  }

  /** Device reachable according to a check-device answer. */
  function checkSaysReachable(answer, deviceId) {
    const list = (answer && answer.reachableDevices) || [];
    const entry = list.find((r) => r.deviceId === deviceId);
    return entry ? Boolean(entry.reachable) : Boolean(answer && answer.reachableCount > 0);
  }

  /** Runs the seed's flow for one device; every outcome ends in a state shown in the row. */
  async function startSync(deviceId, button) {
    const previous = syncRuns.get(deviceId);
    if (previous && previous.busy) return;
    const run = { state: 'checking', busy: true, unreachable: false };
    syncRuns.set(deviceId, run);
    renderSync(deviceId);
    try {
      const check = await api('POST', '/api/essl/check-device', { deviceId });
      if (checkSaysReachable(check, deviceId)) {
        progress.delete(deviceId); // progress of an older sync is not ours
        run.state = 'syncing';
      } else {
        run.unreachable = true; // still ask: the server answers with what it has cached
      }
      renderSync(deviceId);
      const answer = await api('POST', '/api/essl/sync-attendance', { deviceId });
      applySyncAnswer(run, answer);
    } catch (err) {
      if (err.expired) {
        syncRuns.delete(deviceId);
        return;
      }
      if (err.body && err.body.deviceUnreachable === true) {
        applySyncAnswer(run, err.body);
      } else {
        run.state = 'error';
        run.message = err.message;
        run.detail = err.body && err.body.error && err.body.error.message;
      }
    } finally {
      run.busy = false;
      if (syncRuns.get(deviceId) === run) renderSync(deviceId);
      // The button was disabled meanwhile, which drops keyboard focus: give it back.
      if (button.isConnected && (!document.activeElement || document.activeElement === document.body)) button.focus();
      invalidate('devices', 'history');
    }
  }

  function applySyncAnswer(run, answer) {
    const a = answer || {};
    if (a.success === true) {
      run.state = 'completed';
      run.synced = Number(a.totalRecords) || 0;
      run.read = a.stats && typeof a.stats.recordsRead === 'number' ? a.stats.recordsRead : null;
      run.message = a.message;
    } else if (a.deviceUnreachable === true) {
      run.state = 'cached';
      run.message = a.message;
      run.cached = a.cachedData || {};
    } else {
      run.state = 'error';
      run.message = a.message || 'The sync did not complete.';
      run.detail = a.error && a.error.message;
    }
  }

  /** Redraws the sync state element of one device from its run. */
  function renderSync(deviceId) {
    const ui = syncUi.get(deviceId);
    if (!ui) return;
    const run = syncRuns.get(deviceId) || { state: 'idle', busy: false };
    ui.button.disabled = run.busy;
    ui.button.textContent = run.busy ? 'Syncing…' : 'Sync';
    ui.stateEl.setAttribute('data-sync-state', run.state);
    ui.stateEl.className = `sync-state sync-${run.state}`;
    fill(ui.stateEl, syncContent(deviceId, run));
  }

  function syncContent(deviceId, run) {
    switch (run.state) {
      case 'checking':
        return h(
          'p',
          { class: 'sync-title' },
          run.unreachable ? 'Not reachable now. Reading the cached data…' : 'Checking the connection to the terminal…',
        );
      case 'syncing':
        return [h('p', { class: 'sync-title' }, 'Syncing attendance…'), progressView(deviceId)];
      case 'completed':
        return [
          h(
            'p',
            { class: 'sync-title' },
            'Synced ',
            h('span', { 'data-field': 'synced-count' }, String(run.synced)),
            ` new ${plural(run.synced, 'record', 'records')}`,
          ),
          run.read !== null ? h('p', { class: 'small' }, `${run.read} ${plural(run.read, 'record', 'records')} read from the terminal`) : null,
        ];
      case 'cached':
        return cachedView(run);
      case 'error':
        return [
          h('p', { class: 'sync-title' }, 'Sync failed'),
          h(
            'p',
            { 'data-field': 'error' },
            run.message,
            run.detail && !String(run.message).includes(run.detail) ? h('span', { class: 'detail' }, ` (${run.detail})`) : null,
          ),
        ];
      default:
        return [];
    }
  }

  function cachedView(run) {
    const c = run.cached || {};
    const minutes = c.minutesSinceSync;
    return [
      h('p', { class: 'sync-title' }, badge('Offline', 'offline'), ' Showing cached data'),
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Cached records'),
        h('dd', {}, h('span', { 'data-field': 'cached-count' }, String(c.recordCount ?? 0))),
        h('dt', {}, 'Last sync'),
        h('dd', {}, h('span', { 'data-field': 'last-sync' }, c.lastSyncTime ? timeEl(c.lastSyncTime) : 'never')),
        h('dt', {}, 'Since then'),
        h(
          'dd',
          {},
          h('span', { 'data-field': 'minutes-since' }, minutes === null || minutes === undefined ? '—' : String(minutes)),
          minutes === null || minutes === undefined ? '' : ` ${plural(minutes, 'minute', 'minutes')} ago`,
        ),
      ),
      h('p', { class: 'tip' }, h('strong', {}, 'Tip: '), OFFLINE_TIP),
    ];
  }

  function progressView(deviceId) {
    const p = progress.get(deviceId);
    const bar = h('progress', { class: 'bar', 'aria-label': 'Sync progress' });
    if (p && p.total > 0) {
      bar.max = p.total;
      bar.value = Math.min(p.done, p.total);
    }
    // The figures are left out of the live region: one announcement per progress event would drown the states.
    const text = h('span', { class: 'small muted progress-text', 'aria-hidden': 'true' }, progressText(p));
    return h('div', { class: 'progress-line' }, bar, text);
  }

  const progressText = (p) => (p ? `${p.done} of ${p.total || '?'} records` : 'waiting for the agent…');

  /** A `sync.progress` event: moves the bar in place (no redraw, no refetch). */
  function onSyncProgress(data) {
    const first = !progress.has(data.deviceId);
    progress.set(data.deviceId, { done: Number(data.done) || 0, total: Number(data.total) || 0 });
    const run = syncRuns.get(data.deviceId);
    const ui = syncUi.get(data.deviceId);
    if (run && run.state === 'syncing' && ui) {
      const bar = $('progress', ui.stateEl);
      const text = $('.progress-text', ui.stateEl);
      const p = progress.get(data.deviceId);
      if (bar && p.total > 0) {
        bar.max = p.total;
        bar.value = Math.min(p.done, p.total);
      }
      if (text) text.textContent = progressText(p);
    }
    const device = cache.deviceById.get(data.deviceId);
    const row = deviceRow(data.deviceId);
    if (device && row) fill(row.cells[4], lastSyncCell(device));
    // The first event of a sync (maybe someone else's) makes an "in progress" attempt worth fetching.
    if (first) invalidate('devices', 'history');
  }

  function deviceRow(deviceId) {
    const rows = rowMaps.get($('#devices-body'));
    return rows ? rows.get(deviceId) : null;
  }

  const refreshDevices = refresher(
    'devices',
    async () => {
      const [devices] = await Promise.all([fetchDevices(), fetchAgentsQuietly(), fetchPushQuietly()]);
      return devices;
    },
    (devices) => {
      const sorted = [...devices].sort((a, b) => a.name.localeCompare(b.name));
      renderRows($('#devices-body'), sorted, (d) => d.id, buildDeviceRow, updateDeviceRow);
      $('#devices-empty').hidden = sorted.length > 0;
    },
  );

  // ---------------------------------------------------------------------------------------------------------------
  // Sync history page
  // ---------------------------------------------------------------------------------------------------------------

  const HISTORY_COLUMNS = ['Started', 'Device', 'Status', 'Records', 'Duration', 'Agent', 'Error'];

  function historyRow(s) {
    const row = emptyRow({ 'data-sync-id': s.id }, HISTORY_COLUMNS);
    const [started, device, status, records, duration, agent, error] = row.cells;
    fill(started, timeEl(s.startedAt));
    fill(device, s.deviceName || deviceName(s.deviceId));
    fill(status, badge((s.status || 'unknown').replace('_', ' '), SYNC_STATUS_BADGE[s.status] || 'muted'));
    fill(
      records,
      `${s.recordsSynced ?? 0} new`,
      s.recordsTotal !== null && s.recordsTotal !== undefined ? h('span', { class: 'muted' }, ` of ${s.recordsTotal} on the terminal`) : null,
    );
    fill(duration, formatDuration(s.durationMs));
    fill(agent, s.agentName || (s.agentId ? `agent ${shortId(s.agentId)}` : dash()));
    fill(
      error,
      s.errorKind ? [badge(s.errorKind, 'failed'), ' '] : null,
      s.errorMessage ? h('span', { class: 'error-text' }, s.errorMessage) : s.errorKind ? null : dash(),
    );
    return row;
  }

  const refreshHistory = refresher(
    'history',
    async () => {
      const [, data] = await Promise.all([
        fetchDevices().catch((e) => (e.expired ? Promise.reject(e) : null)),
        api('GET', withQuery('/api/sync-history', { deviceId: $('#h-device').value, limit: 100 })),
      ]);
      return (data && data.items) || [];
    },
    (items) => {
      fill($('#history-body'), items.map(historyRow));
      $('#history-empty').hidden = items.length > 0;
    },
  );

  // ---------------------------------------------------------------------------------------------------------------
  // Attendance page
  // ---------------------------------------------------------------------------------------------------------------

  const ATTENDANCE_COLUMNS = ['Device', 'User', 'Terminal time', 'Punched at', 'Verified by', 'Punch', 'Flags'];
  const PAGE_SIZE = 100;
  const MAX_PAGE = 1000;

  const PUNCH_LABELS = ['Check in', 'Check out', 'Break out', 'Break in', 'Overtime in', 'Overtime out'];

  /** Bits of `flags` (server/src/ingest.rs). */
  const FLAG_BADGES = [
    [1, 'ambiguous time', 'The clock time happened twice (clocks went back); the earlier instant was taken.'],
    [2, 'nonexistent time', 'The clock time does not exist (clocks went forward); shifted by the gap.'],
    [4, 'future', 'More than a day ahead of the server clock.'],
  ];

  const attendance = { filters: {}, items: [], next: null, loadingMore: false };

  /** Form values as API parameters; From/To are local wall-clock times converted to RFC 3339 UTC. */
  function readAttendanceFilters() {
    return {
      deviceId: $('#f-device').value,
      userId: $('#f-user').value.trim(),
      from: localToRfc3339($('#f-from').value),
      to: localToRfc3339($('#f-to').value),
    };
  }

  function localToRfc3339(value) {
    if (!value) return '';
    const date = new Date(value); // "YYYY-MM-DDTHH:MM" without an offset is local time
    return Number.isNaN(date.getTime()) ? '' : date.toISOString().replace('.000Z', 'Z');
  }

  function updateCsvLink(filters) {
    $('#attendance-csv').setAttribute('href', withQuery('/api/attendance', { ...filters, format: 'csv' }));
  }

  function flagBadges(flags) {
    const out = [];
    let rest = Number(flags) || 0;
    for (const [bit, label, title] of FLAG_BADGES) {
      if (rest & bit) out.push(badge(label, 'cached', title), ' ');
      rest &= ~bit;
    }
    for (let bit = 1; rest; bit <<= 1) {
      if (rest & bit) out.push(badge(`flag ${bit}`, 'muted'), ' ');
      rest &= ~bit;
    }
    return out.length ? out : dash();
  }

  function punchRow(p) {
    const row = emptyRow({ 'data-punch': `${p.deviceId}/${p.userId}/${p.punchedAt}` }, ATTENDANCE_COLUMNS);
    const [device, user, local, at, verify, punch, flags] = row.cells;
    fill(device, deviceName(p.deviceId));
    fill(user, h('span', { class: 'mono' }, p.userId));
    fill(local, h('span', { class: 'mono' }, String(p.localTime || '').replace('T', ' ')));
    fill(at, timeEl(p.punchedAt));
    fill(verify, h('span', { title: `status ${p.status}` }, p.verify || String(p.status)));
    fill(punch, PUNCH_LABELS[p.punch] || `punch ${p.punch}`);
    fill(flags, flagBadges(p.flags));
    return row;
  }

  function renderAttendance() {
    const { items, next } = attendance;
    fill($('#attendance-body'), items.map(punchRow));
    $('#attendance-empty').hidden = items.length > 0;
    $('#attendance-more').hidden = !next;
    $('#attendance-count').textContent = items.length
      ? `Showing ${items.length} ${plural(items.length, 'punch', 'punches')}${next ? '; more are available' : ''}.`
      : '';
  }

  function attendanceUrl(extra) {
    return withQuery('/api/attendance', { ...attendance.filters, ...extra });
  }

  // A refresh reloads as many rows as are shown, so "Load more" pages survive live updates.
  const refreshAttendance = refresher(
    'attendance',
    async () => {
      const limit = Math.min(MAX_PAGE, Math.max(PAGE_SIZE, attendance.items.length));
      const [, page] = await Promise.all([
        fetchDevices().catch((e) => (e.expired ? Promise.reject(e) : null)),
        api('GET', attendanceUrl({ limit })),
      ]);
      return page;
    },
    (page) => {
      attendance.items = (page && page.items) || [];
      attendance.next = (page && page.nextCursor) || null;
      renderAttendance();
    },
  );

  function onAttendanceFilter(event) {
    event.preventDefault();
    const filters = readAttendanceFilters();
    if (filters.from && filters.to && filters.from >= filters.to) {
      showPageError('attendance', new ApiError(0, 'input', '“From” must be before “To”.', null));
      return;
    }
    attendance.filters = filters;
    attendance.items = [];
    attendance.next = null;
    updateCsvLink(filters);
    refreshAttendance();
  }

  function onAttendanceReset() {
    $('#attendance-filter').reset();
    attendance.filters = {};
    attendance.items = [];
    updateCsvLink({});
    refreshAttendance();
  }

  async function onLoadMore() {
    const button = $('#attendance-more');
    if (!attendance.next || attendance.loadingMore) return;
    attendance.loadingMore = true;
    button.disabled = true;
    try {
      const page = await api('GET', attendanceUrl({ limit: PAGE_SIZE, cursor: attendance.next }));
      attendance.items = attendance.items.concat((page && page.items) || []);
      attendance.next = (page && page.nextCursor) || null;
      renderAttendance();
      showPageError('attendance', null);
    } catch (err) {
      showPageError('attendance', err);
    } finally {
      attendance.loadingMore = false;
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Admin page: add devices, agent tokens
  // ---------------------------------------------------------------------------------------------------------------

  const TOKEN_COLUMNS = ['Agent', 'Site', 'State', 'Last seen', 'Actions'];

  /** A number input: undefined when empty, NaN when the browser could not read it. */
  function numberField(input) {
    if (input.validity && input.validity.badInput) return NaN;
    const text = input.value.trim();
    return text === '' ? undefined : Number(text);
  }

  /** The device form as the API body; the server checks the rules and its 422 messages are shown as they are. */
  function deviceBody() {
    const body = {
      name: $('#d-name').value.trim(),
      ipAddress: $('#d-ip').value.trim(),
      transport: $('#d-transport').value,
    };
    const port = numberField($('#d-port'));
    const commKey = numberField($('#d-commkey'));
    if (Number.isNaN(port)) throw new ApiError(0, 'input', 'The port must be a number from 1 to 65535.', null);
    if (Number.isNaN(commKey)) throw new ApiError(0, 'input', 'The comm key must be a number from 0 to 999999.', null);
    if (port !== undefined) body.port = port;
    if (commKey !== undefined) body.commKey = commKey;
    const site = $('#d-site').value.trim();
    const timezone = $('#d-timezone').value.trim();
    if (site) body.site = site;
    if (timezone) body.timezone = timezone;
    return body;
  }

  async function onDeviceSubmit(event) {
    event.preventDefault();
    const error = $('#device-error');
    const ok = $('#device-ok');
    const submit = $('#d-submit');
    setMessage(error, '');
    setMessage(ok, '');
    submit.disabled = true;
    try {
      const device = await api('POST', '/api/devices', deviceBody());
      $('#device-form').reset();
      setMessage(ok, `Added “${device && device.name ? device.name : 'the device'}”.`);
      invalidate('devices');
    } catch (err) {
      if (!err.expired) setMessage(error, err.message);
    } finally {
      submit.disabled = false;
    }
  }

  async function onTokenSubmit(event) {
    event.preventDefault();
    const error = $('#token-error');
    const submit = $('#token-create');
    setMessage(error, '');
    submit.disabled = true;
    try {
      const answer = await api('POST', '/api/agents', {
        name: $('#token-name').value.trim(),
        site: $('#token-site').value.trim(),
      });
      $('#token-form').reset();
      showTokenOnce(answer.agent || {}, answer.token);
      invalidate('agents');
    } catch (err) {
      if (!err.expired) setMessage(error, err.message);
    } finally {
      submit.disabled = false;
    }
  }

  function agentSocketUrl() {
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    return `${scheme}://${window.location.host}/agent/ws`;
  }

  /**
   * The new token, shown this once. It lives only in this panel's DOM and closures: dismissing (or logging out)
   * removes the panel, and with it the last reference to the token.
   */
  function showTokenOnce(agent, token) {
    const server = agentSocketUrl();
    const linux = `sudo ESSL_AGENT_TOKEN=${token} essl-agent service install --server ${server}`;
    const windows = `.\\install.ps1 -Server ${server} -Token ${token}`;
    const panel = h(
      'div',
      { id: 'token-once', class: 'token-once', role: 'region', 'aria-labelledby': 'token-once-title' },
      h('h3', { id: 'token-once-title', tabindex: '-1' }, 'Token for ', agent.name || 'the new agent'),
      h('p', { class: 'warn' }, 'Copy it now: it is shown this once and cannot be shown again.'),
      copyBlock('Token', 'token-value', token),
      copyBlock('Install on Linux', 'token-install', linux),
      copyBlock('Install on Windows (PowerShell as administrator, in the agent folder)', 'token-install-windows', windows),
      h('button', { type: 'button', id: 'token-dismiss', class: 'btn', onclick: dismissTokenOnce }, 'I saved it, hide the token'),
    );
    fill($('#token-slot'), panel);
    $('#token-once-title').focus();
  }

  function dismissTokenOnce() {
    const panel = document.getElementById('token-once');
    if (panel) panel.remove();
    if (session.user && !pageSection('admin').hidden) $('#token-name').focus();
  }

  function copyBlock(label, id, text) {
    const code = h('code', { id }, text);
    const button = h('button', { type: 'button', class: 'btn btn-small', 'aria-label': `Copy: ${label}` }, 'Copy');
    button.addEventListener('click', () => copyText(text, code, button));
    return h(
      'div',
      { class: 'copy-block' },
      h('div', { class: 'copy-head' }, h('span', { class: 'copy-label' }, label), button),
      h('pre', { class: 'code' }, code),
    );
  }

  /** Selects the text (so Ctrl+C works anyway) and tries the clipboard; a refusal is not an error worth a word. */
  function copyText(text, codeEl, button) {
    const range = document.createRange();
    range.selectNodeContents(codeEl);
    const selection = window.getSelection();
    if (selection) {
      selection.removeAllRanges();
      selection.addRange(range);
    }
    if (!navigator.clipboard || typeof navigator.clipboard.writeText !== 'function') return;
    navigator.clipboard.writeText(text).then(
      () => {
        button.textContent = 'Copied';
        setTimeout(() => {
          button.textContent = 'Copy';
        }, 2000);
      },
      () => {},
    );
  }

  function buildTokenRow(a) {
    const row = emptyRow({}, TOKEN_COLUMNS);
    row.cells[4].classList.add('actions');
    return row;
  }

  function updateTokenRow(row, a) {
    const [name, site, state, seen, actions] = row.cells;
    const status = agentStatus(a);
    fill(name, h('strong', {}, a.name), h('div', { class: 'small muted mono' }, shortId(a.id)));
    fill(site, a.site || dash());
    fill(state, badge(status, status));
    fill(seen, timeEl(a.lastSeen, { relative: true }));
    let button = $('button[data-action="revoke"]', actions);
    if (a.revoked) {
      if (button) actions.replaceChildren();
      if (!actions.firstChild) append(actions, [h('span', { class: 'muted' }, 'revoked')]);
    } else {
      if (!button) {
        button = h('button', { type: 'button', class: 'btn btn-small btn-danger', 'data-action': 'revoke', 'data-agent-id': a.id }, 'Revoke');
        button.addEventListener('click', () => revokeAgent(a.id, button));
        fill(actions, button);
      }
      button.setAttribute('aria-label', `Revoke ${a.name}`);
    }
  }

  async function revokeAgent(id, button) {
    const agent = cache.agentById.get(id);
    const name = agent ? agent.name : shortId(id);
    const sure = window.confirm(`Revoke the token of agent "${name}"?\n\nIt is disconnected at once and can never connect with this token again.`);
    if (!sure) return;
    const error = $('#revoke-error');
    setMessage(error, '');
    button.disabled = true;
    try {
      await api('DELETE', `/api/agents/${encodeURIComponent(id)}`); // 200 with the agent or 204: both fine
      refreshAdmin();
      invalidate('agents', 'devices');
    } catch (err) {
      button.disabled = false;
      if (!err.expired) setMessage(error, `Could not revoke “${name}”: ${err.message}`);
    }
  }

  const refreshAdmin = refresher(
    'admin',
    async () => {
      const [agents, push] = await Promise.all([
        fetchAgents(),
        fetchPushTerminals(),
        fetchDevices().catch((e) => (e.expired ? Promise.reject(e) : null)),
      ]);
      return { agents, push };
    },
    ({ agents, push }) => {
      const sorted = [...agents].sort((a, b) => Number(a.revoked) - Number(b.revoked) || a.name.localeCompare(b.name));
      renderRows($('#tokens-body'), sorted, (a) => a.id, buildTokenRow, updateTokenRow);
      $('#tokens-empty').hidden = sorted.length > 0;
      renderPushTerminals(push);
    },
  );

  // ---------------------------------------------------------------------------------------------------------------
  // Admin page: push (ADMS) terminals, and claiming a quarantined one
  // ---------------------------------------------------------------------------------------------------------------

  const PUSH_COLUMNS = ['Serial number', 'State', 'Device', 'Dialect', 'Firmware', 'Last seen', 'Pending commands', 'Actions'];

  const PUSH_STATE_TIPS = {
    quarantined: 'Unknown serial: answered, but nothing it sends is stored and no command reaches it until claimed. It keeps its records.',
    claimed: 'A push device has this serial: its punches are stored.',
  };

  /** Quarantined terminals first (they wait for someone), then by serial. */
  function renderPushTerminals(items) {
    const sorted = [...items].sort(
      (a, b) => Number(a.status === 'claimed') - Number(b.status === 'claimed') || a.serialNumber.localeCompare(b.serialNumber),
    );
    renderRows($('#push-body'), sorted, (t) => t.serialNumber, buildPushRow, updatePushRow);
    $('#push-empty').hidden = sorted.length > 0;
  }

  function buildPushRow(t) {
    const row = emptyRow({ 'data-push-serial': t.serialNumber }, PUSH_COLUMNS);
    row.cells[1].setAttribute('data-field', 'push-state');
    row.cells[7].classList.add('actions');
    return row;
  }

  function updatePushRow(row, t) {
    const [serial, state, device, dialect, firmware, seen, pending, actions] = row.cells;
    const quarantined = t.status !== 'claimed';
    fill(serial, h('strong', { class: 'mono' }, t.serialNumber), t.lastAddress ? h('div', { class: 'small muted' }, `from ${t.lastAddress}`) : null);
    // The state cell holds the bare word (tests read its text).
    fill(state, badge(t.status, quarantined ? 'cached' : 'ok', PUSH_STATE_TIPS[t.status] || null));
    fill(device, t.deviceName || (t.deviceId ? deviceName(t.deviceId) : dash()));
    fill(dialect, h('span', { title: DIALECTS[t.dialect] || null }, t.dialect || '?'), t.pushVersion ? h('span', { class: 'muted' }, ` ${t.pushVersion}`) : null);
    fill(firmware, t.firmware || dash());
    fill(seen, timeEl(t.lastSeen, { relative: true }));
    fill(pending, quarantined ? dash() : String(Number(t.pendingCommands) || 0));
    let button = $('button[data-action="claim"]', actions);
    if (!quarantined) {
      if (button) actions.replaceChildren();
      return;
    }
    if (!button) {
      button = h('button', { type: 'button', class: 'btn btn-small btn-primary', 'data-action': 'claim' }, 'Claim…');
      button.addEventListener('click', () => openClaim(t.serialNumber, button));
      fill(actions, button);
    }
    button.setAttribute('aria-label', `Claim ${t.serialNumber}`);
  }

  /** The serial the claim form is open for, and the button that opened it (focus goes back there on cancel). */
  const claim = { serial: null, opener: null };

  function openClaim(serial, button) {
    claim.serial = serial;
    claim.opener = button;
    $('#claim-form').reset();
    $('#claim-serial').textContent = serial;
    $('#claim-name').value = serial;
    setMessage($('#claim-error'), '');
    setMessage($('#claim-ok'), '');
    $('#claim-form').hidden = false;
    $('#claim-name').focus();
  }

  function closeClaim() {
    const opener = claim.opener;
    claim.serial = null;
    claim.opener = null;
    $('#claim-form').hidden = true;
    setMessage($('#claim-error'), '');
    if (opener && opener.isConnected) opener.focus();
  }

  async function onClaimSubmit(event) {
    event.preventDefault();
    const serial = claim.serial;
    if (!serial) return;
    const error = $('#claim-error');
    const submit = $('#claim-submit');
    const body = {
      serialNumber: serial,
      name: $('#claim-name').value.trim() || serial,
      timezone: $('#claim-timezone').value.trim(),
    };
    const site = $('#claim-site').value.trim();
    if (site) body.site = site;
    if (!body.timezone) {
      setMessage(error, 'Enter the time zone of the terminal’s clock, e.g. Asia/Kolkata: its punch times depend on it.');
      $('#claim-timezone').focus();
      return;
    }
    setMessage(error, '');
    submit.disabled = true;
    try {
      const device = await api('POST', '/api/push/claim', body);
      claim.serial = null;
      claim.opener = null;
      $('#claim-form').hidden = true;
      const ok = $('#claim-ok');
      setMessage(ok, `Claimed ${serial} as “${device && device.name ? device.name : serial}”. Its punches are stored from its next upload on, its backlog included.`);
      ok.focus();
      refreshAdmin();
      invalidate('devices');
    } catch (err) {
      if (!err.expired) setMessage(error, err.message);
    } finally {
      submit.disabled = false;
    }
  }

  function fillTimeZones() {
    const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    const list = $('#tz-list');
    fill(list, ['UTC', ...zones.filter((z) => z !== 'UTC')].map((z) => h('option', { value: z })));
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Router
  // ---------------------------------------------------------------------------------------------------------------

  const PAGES = {
    agents: { refresh: refreshAgents, topics: ['agents', 'devices'] },
    devices: { refresh: refreshDevices, topics: ['devices', 'agents'] },
    history: { refresh: refreshHistory, topics: ['history'] },
    attendance: { refresh: refreshAttendance, topics: ['attendance'] },
    admin: { refresh: refreshAdmin, topics: ['agents', 'push'] },
  };

  function routeName() {
    const match = /^#\/([a-z]+)/.exec(window.location.hash);
    const name = match ? match[1] : 'agents';
    if (!PAGES[name] || (name === 'admin' && !isAdmin())) return null;
    return name;
  }

  /** Shows the page of the hash (agents by default); `focus` moves focus to its heading (user navigation). */
  function route({ focus = false } = {}) {
    if (!session.user) return;
    let name = routeName();
    if (!name) {
      name = 'agents';
      window.history.replaceState(null, '', '#/agents');
    }
    currentPage = name;
    for (const key of Object.keys(PAGES)) pageSection(key).hidden = key !== name;
    for (const link of document.querySelectorAll('a[data-nav]')) {
      if (link.dataset.nav === name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = `${PAGE_TITLES[name]} · essl-relay`;
    PAGES[name].refresh();
    if (focus) {
      const heading = $('h1', pageSection(name));
      if (heading) heading.focus();
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Live updates (Server-Sent Events)
  // ---------------------------------------------------------------------------------------------------------------

  const live = { source: null, opened: false, retryTimer: null, retryDelay: 2000 };

  /** How often the admin page re-reads the push terminals (new serials and last contacts come with no event). */
  const PUSH_POLL_MS = 5000;

  // Events name what changed; the visible page re-fetches when one of its topics did: 200 ms after the last event
  // of a burst, and at least once a second while a burst goes on (a big sync sends many).
  const DEBOUNCE_MS = 200;
  const MAX_WAIT_MS = 1000;
  const pendingTopics = new Set();
  let flushTimer = null;
  let burstStart = 0;

  function invalidate(...topics) {
    for (const t of topics.flat()) pendingTopics.add(t);
    const now = Date.now();
    if (flushTimer) clearTimeout(flushTimer);
    else burstStart = now;
    const wait = Math.max(0, Math.min(DEBOUNCE_MS, burstStart + MAX_WAIT_MS - now));
    flushTimer = setTimeout(flushTopics, wait);
  }

  function flushTopics() {
    flushTimer = null;
    const changed = new Set(pendingTopics);
    pendingTopics.clear();
    if (!session.user || !currentPage) return;
    const page = PAGES[currentPage];
    if (changed.has('*') || page.topics.some((t) => changed.has(t))) page.refresh();
  }

  const EVENT_HANDLERS = {
    'agent.connected': () => invalidate('agents', 'devices'),
    'agent.disconnected': () => invalidate('agents', 'devices'),
    'device.reachability': () => invalidate('agents', 'devices'),
    'sync.progress': onSyncProgress,
    'sync.finished': (data) => {
      progress.delete(data.deviceId);
      invalidate('devices', 'history', 'attendance');
    },
    // Push terminals' punches too (their uploads), so their devices' counts move like pulled ones'.
    'punches.stored': () => invalidate('devices', 'attendance'),
    // This client fell behind and events were dropped: reload whatever is shown.
    resync: () => invalidate('*'),
    'agent.outbox': onOutbox,
  };

  /**
   * An `agent.outbox` event: the agent's row changes at once; the list is fetched again for the record count,
   * which the event does not carry.
   */
  function onOutbox(data) {
    outboxes.set(data.agentId, { bytes: Number(data.bytes) || 0, limitBytes: Number(data.limitBytes) || 0, pendingRecords: null });
    const agent = cache.agentById.get(data.agentId);
    const rows = rowMaps.get($('#agents-body'));
    const row = rows && rows.get(data.agentId);
    if (agent && row) updateAgentRow(row, agent);
    invalidate('agents');
  }

  function setLive(open) {
    const el = $('#live');
    el.setAttribute('data-state', open ? 'open' : 'closed');
    el.title = open ? 'Live updates are on' : 'Live updates are not connected; reconnecting';
    $('#live-text').textContent = open ? 'Live' : 'Offline';
  }

  function connectLive() {
    disconnectLive();
    if (typeof window.EventSource !== 'function') return;
    const source = new EventSource('/api/events');
    live.source = source;
    source.addEventListener('open', () => {
      setLive(true);
      live.retryDelay = 2000;
      // After a gap, events may have been missed: catch up once.
      if (live.opened) invalidate('*');
      live.opened = true;
    });
    source.addEventListener('error', () => {
      setLive(false);
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (e.g. the session ended): find out why.
      if (source.readyState === EventSource.CLOSED && live.source === source) scheduleLiveRetry();
    });
    for (const [name, handler] of Object.entries(EVENT_HANDLERS)) {
      source.addEventListener(name, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return; // not ours to judge; the next refresh shows the truth
        }
        if (data && typeof data === 'object') handler(data);
      });
    }
  }

  function scheduleLiveRetry() {
    clearTimeout(live.retryTimer);
    live.retryTimer = setTimeout(async () => {
      live.retryTimer = null;
      if (!session.user) return;
      try {
        const s = await api('GET', SESSION_URL);
        if (!s || !s.user) {
          sessionExpired();
          return;
        }
        if (s.csrfToken) session.csrf = s.csrfToken;
        connectLive();
      } catch {
        scheduleLiveRetry(); // server unreachable: try again later
      }
    }, live.retryDelay);
    live.retryDelay = Math.min(live.retryDelay * 2, 60000);
  }

  function disconnectLive() {
    clearTimeout(live.retryTimer);
    live.retryTimer = null;
    if (live.source) {
      live.source.close();
      live.source = null;
    }
    live.opened = false;
    setLive(false);
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Session: login, logout, expiry
  // ---------------------------------------------------------------------------------------------------------------

  /** Shows the dashboard for a session answer; `focus` moves focus to the page heading (after the login form). */
  function enterApp(answer, { focus = false } = {}) {
    session.user = answer.user;
    session.csrf = answer.csrfToken || null;
    watchExpiry(answer.expiresAt);
    $('#boot').hidden = true;
    $('#login-view').hidden = true;
    setMessage($('#login-error'), '');
    $('#topbar').hidden = false;
    $('#whoami').textContent = `${session.user.name} (${session.user.role})`;
    $('#nav-admin-item').hidden = !isAdmin();
    connectLive();
    route({ focus });
  }

  // An idle page makes no request that could meet the 401: look again when the session says it ends.
  let expiryTimer = null;

  function watchExpiry(expiresAt) {
    clearTimeout(expiryTimer);
    expiryTimer = null;
    const end = parseInstant(expiresAt);
    if (!end) return;
    const delay = Math.min(Math.max(end.getTime() - Date.now() + 1000, 1000), 2 ** 31 - 1);
    expiryTimer = setTimeout(checkSession, delay);
  }

  async function checkSession() {
    if (!session.user) return;
    try {
      const answer = await api('GET', SESSION_URL);
      if (!answer || !answer.user) sessionExpired();
      else {
        if (answer.csrfToken) session.csrf = answer.csrfToken;
        watchExpiry(answer.expiresAt); // sessions may slide
      }
    } catch {
      watchExpiry(new Date(Date.now() + 60000).toISOString()); // server away: try again in a minute
    }
  }

  /** Back to the login form; everything the previous session showed is dropped from the page and from memory. */
  function showLogin(message) {
    session.user = null;
    session.csrf = null;
    currentPage = null;
    clearTimeout(expiryTimer);
    disconnectLive();
    resetPages();
    $('#boot').hidden = true;
    $('#topbar').hidden = true;
    for (const key of Object.keys(PAGES)) pageSection(key).hidden = true;
    $('#login-view').hidden = false;
    document.title = 'Log in · essl-relay';
    setMessage($('#login-error'), message);
    $('#login-password').value = '';
    $('#login-username').focus();
  }

  function resetPages() {
    const panel = document.getElementById('token-once');
    if (panel) panel.remove();
    for (const id of ['#agents-body', '#devices-body', '#history-body', '#attendance-body', '#tokens-body', '#push-body']) clearRows($(id));
    for (const el of document.querySelectorAll('.page-error, #device-error, #device-ok, #token-error, #revoke-error, #claim-error, #claim-ok')) setMessage(el, '');
    $('#claim-form').hidden = true;
    claim.serial = null;
    claim.opener = null;
    syncRuns.clear();
    syncUi.clear();
    progress.clear();
    outboxes.clear();
    cache.deviceById = new Map();
    cache.agentById = new Map();
    cache.pushBySerial = new Map();
    attendance.items = [];
    attendance.next = null;
    renderAttendance();
  }

  function sessionExpired() {
    if (!session.user) return; // said once is enough when several requests fail together
    showLogin('Your session expired. Please log in again.');
  }

  async function onLogin(event) {
    event.preventDefault();
    const error = $('#login-error');
    const submit = $('#login-submit');
    const username = $('#login-username').value.trim();
    const password = $('#login-password').value;
    if (!username || !password) {
      setMessage(error, 'Enter your user name and password.');
      (username ? $('#login-password') : $('#login-username')).focus();
      return;
    }
    setMessage(error, '');
    submit.disabled = true;
    try {
      const answer = await api('POST', SESSION_URL, { username, password });
      if (!answer || !answer.user) throw new ApiError(0, 'session', 'The server did not open a session.', answer);
      $('#login-password').value = '';
      enterApp(answer, { focus: true });
    } catch (err) {
      setMessage(error, err.message); // 401 wrong login, 429 rate limit: the server's own words
      $('#login-password').select();
    } finally {
      submit.disabled = false;
    }
  }

  async function onLogout() {
    const button = $('#logout');
    button.disabled = true;
    try {
      await api('DELETE', SESSION_URL);
      showLogin('');
    } catch (err) {
      // Without an answer the cookie may still be valid: stay, and say so.
      if (err.status === 0 || err.status >= 500) showBanner(`Could not log out: ${err.message}`);
      else showLogin('');
    } finally {
      button.disabled = false;
    }
  }

  async function boot() {
    try {
      const answer = await api('GET', SESSION_URL);
      if (answer && answer.user) enterApp(answer);
      else showLogin('');
    } catch (err) {
      showLogin(err.message);
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Page-wide messages and wiring
  // ---------------------------------------------------------------------------------------------------------------

  function showBanner(text) {
    $('#banner-text').textContent = text;
    $('#banner').hidden = false;
  }

  function init() {
    $('#login-form').addEventListener('submit', onLogin);
    $('#logout').addEventListener('click', onLogout);
    $('#banner-close').addEventListener('click', () => {
      $('#banner').hidden = true;
    });
    // The skip link focuses <main> without touching the hash (the hash is the router's).
    $('#skip-link').addEventListener('click', (event) => {
      event.preventDefault();
      $('#main').focus();
    });
    window.addEventListener('hashchange', () => route({ focus: true }));

    $('#attendance-filter').addEventListener('submit', onAttendanceFilter);
    // The CSV link downloads what the form says, even before "Filter" is pressed.
    for (const type of ['input', 'change']) {
      $('#attendance-filter').addEventListener(type, () => updateCsvLink(readAttendanceFilters()));
    }
    $('#f-reset').addEventListener('click', onAttendanceReset);
    $('#attendance-more').addEventListener('click', onLoadMore);
    $('#h-device').addEventListener('change', () => refreshHistory());
    $('#history-filter').addEventListener('submit', (event) => {
      event.preventDefault();
      refreshHistory();
    });
    $('#device-form').addEventListener('submit', onDeviceSubmit);
    $('#token-form').addEventListener('submit', onTokenSubmit);
    $('#claim-form').addEventListener('submit', onClaimSubmit);
    $('#claim-cancel').addEventListener('click', closeClaim);

    // A safety net: nothing should reach here, but if it does the user sees it, and the console stays clean.
    window.addEventListener('unhandledrejection', (event) => {
      event.preventDefault();
      const reason = event.reason;
      if (reason && reason.expired) return;
      showBanner(`Something went wrong: ${reason && reason.message ? reason.message : String(reason)}`);
    });

    fillTimeZones();
    updateCsvLink({});
    setInterval(tickRelativeTimes, 1000);
    // A push terminal that calls for the first time sends no event: the admin page looks again now and then.
    setInterval(() => {
      if (session.user && currentPage === 'admin' && !document.hidden) invalidate('push');
    }, PUSH_POLL_MS);
    boot();
  }

  init();
})();
