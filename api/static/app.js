// The chatdf page: signs in, lists conversations, attaches datasets, streams answers over /ws.
// It speaks only the public REST + WebSocket contract. Every text from the server (model
// answers, titles, dataset cells, error sentences) reaches the page through textContent.

const $ = (id) => document.getElementById(id);
const PHASES = { queued: "Queued", generating: "Thinking", executing: "Running SQL", formatting: "Writing the answer" };
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000, 8000];
const SILENCE_LIMIT_MS = 90000; // no frame (pings come every 30 s by default): the socket is dead
const SAMPLE_PATH = "/samples/sales.parquet";

const state = {
  user: null,
  conversations: [],
  current: null, // GET /conversations/{id}
  turn: null, // {conversationId, messageId, text, phases: [], gap}
  results: new Map(), // message id -> query result (or {error})
  finished: new Set(), // message ids whose chat_complete or chat_error has arrived
  socket: null,
  retries: 0,
  lastFrame: 0,
  signingOut: false,
  opened: false, // a socket of this sign-in has been open before (so a new one follows a drop)
};

class ApiError extends Error {
  constructor(status, error, details) {
    super(error);
    this.status = status;
    this.details = details || "";
  }
}

// ---- DOM helpers -------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(id, err) {
  const node = $(id);
  node.replaceChildren();
  if (!err) return;
  node.append(el("span", { class: "error-text" }, err.message || String(err)));
  if (err.details) node.append(el("span", { class: "details" }, ` (${err.details})`));
}

function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
}

const fmt = new Intl.NumberFormat("en");
function duration(seconds) {
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60);
  return h ? `${h} h ${m} min` : `${Math.max(m, 1)} min`;
}
function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// ---- REST ------------------------------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "Could not reach the server; check the connection and try again", String(err));
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const error = data && typeof data.error === "string" ? data.error : `The server answered ${response.status}`;
    if (response.status === 401 && state.user) signedOut("Your session has ended; sign in again.");
    throw new ApiError(response.status, error, data && data.details);
  }
  return data;
}

// ---- sign in / out ---------------------------------------------------------------------------

async function start() {
  wireForms();
  try {
    state.user = await api("GET", "/auth/me");
  } catch (err) {
    showSignIn(err.status === 401 ? "" : err);
    return;
  }
  await enterApp();
}

function showSignIn(err) {
  $("app").hidden = true;
  $("signin").hidden = false;
  showError("signin-error", err);
}

async function signInDev(event) {
  event.preventDefault();
  const body = {};
  const email = $("dev-email").value.trim();
  const key = $("referral-key").value.trim();
  if (email) body.email = email;
  if (key) body.referral_key = key;
  try {
    const answer = await api("POST", "/auth/dev-login", body);
    state.user = answer.user;
  } catch (err) {
    showError("signin-error", err);
    return;
  }
  await enterApp();
}

async function signInGoogle() {
  const key = $("referral-key").value.trim();
  try {
    const answer = await api("POST", "/auth/google", key ? { referral_key: key } : {});
    window.location.assign(answer.redirect_url);
  } catch (err) {
    showError("signin-error", err);
  }
}

async function signOut() {
  state.signingOut = true;
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  signedOut("");
}

function signedOut(message) {
  state.user = null;
  state.current = null;
  state.turn = null;
  if (state.socket) { state.signingOut = true; state.socket.close(); }
  banner("");
  showSignIn(message ? new ApiError(401, message) : null);
}

async function enterApp() {
  state.signingOut = false;
  state.opened = false;
  $("signin").hidden = true;
  $("app").hidden = false;
  showError("signin-error", null);
  const { name, email } = state.user;
  $("user-name").textContent = name && email && name !== email ? `${name} · ${email}` : name || email || "";
  connect();
  await Promise.all([loadConversations(), refreshUsage()]);
  const wanted = location.hash.startsWith("#c=") ? location.hash.slice(3) : "";
  const found = state.conversations.find((c) => c.id === wanted) || state.conversations[0];
  if (state.current) return; // the user opened one meanwhile
  if (found) await openConversation(found.id);
  else renderConversation();
}

// ---- WebSocket -------------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`); // the session cookie signs it
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.retries = 0;
    state.lastFrame = Date.now();
    document.body.dataset.socket = "open";
    banner("");
    reread(state.opened); // the server replays nothing: read again what came before this socket
    state.opened = true;
  });
  socket.addEventListener("message", (event) => {
    state.lastFrame = Date.now();
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    if (data && typeof data.type === "string") handleEvent(data);
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    document.body.dataset.socket = "closed";
    if (state.signingOut || !state.user) return;
    if (event.code === 4001) { signedOut("Your session has ended; sign in again."); return; }
    const delay = RECONNECT_DELAYS_MS[Math.min(state.retries, RECONNECT_DELAYS_MS.length - 1)];
    state.retries += 1;
    banner("Connection lost. Reconnecting…");
    setTimeout(() => { if (state.user && !state.socket) connect(); }, delay);
  });
}

setInterval(() => {
  const socket = state.socket;
  if (socket && socket.readyState === WebSocket.OPEN && Date.now() - state.lastFrame > SILENCE_LIMIT_MS) {
    socket.close(); // half-open: nothing arrives any more, not even pings
  }
}, 5000);

async function reread(afterDrop) {
  if (!state.user) return;
  await Promise.all([loadConversations(), refreshUsage()]);
  if (state.current) await openConversation(state.current.id, { keepError: true, gap: afterDrop });
  document.body.dataset.reread = String(Number(document.body.dataset.reread || 0) + 1);
}

function handleEvent(event) {
  const here = state.current && event.conversation_id === state.current.id;
  switch (event.type) {
    case "ping":
      state.socket?.send(JSON.stringify({ type: "pong" }));
      return;
    case "query_status":
      if (here) { const turn = ensureTurn(); if (!turn.phases.includes(event.phase)) turn.phases.push(event.phase); turn.phase = event.phase; renderTurn(); }
      return;
    case "chat_token":
      if (here) { const turn = ensureTurn(); turn.messageId ||= event.message_id; turn.text += event.token; renderTurn(); }
      return;
    case "chat_complete":
      state.finished.add(event.message_id);
      if (here) { state.turn = null; openConversation(state.current.id); }
      refreshUsage();
      loadConversations();
      return;
    case "chat_error":
      if (event.message_id) state.finished.add(event.message_id);
      if (here) {
        state.turn = null;
        showError("chat-error", new ApiError(0, event.error, event.details));
        openConversation(state.current.id, { keepError: true });
      }
      return;
    case "dataset_loading":
    case "dataset_loaded":
    case "dataset_error":
      if (here) updateDataset(event);
      loadConversations();
      return;
    case "rate_limit_warning":
      refreshUsage();
      $("usage").dataset.warning = `You have used ${event.usage_percent}% of your daily tokens`;
      return;
    case "rate_limit_exceeded":
      refreshUsage();
      if (here) showError("chat-error", new ApiError(429, `Your daily token budget is used up; it frees up within ${duration(event.resets_in_seconds)}`));
      return;
    default:
      return; // clients ignore types they do not know
  }
}

function ensureTurn() {
  if (!state.turn || state.turn.conversationId !== state.current.id) {
    state.turn = { conversationId: state.current.id, messageId: null, text: "", phases: [], phase: null, gap: false };
  }
  return state.turn;
}

// ---- usage -----------------------------------------------------------------------------------

async function refreshUsage() {
  let usage;
  try { usage = await api("GET", "/usage"); } catch { return; }
  const percent = Math.min(100, Math.max(0, Number(usage.usage_percent) || 0));
  $("usage-fill").style.width = `${percent}%`;
  $("usage").dataset.level = percent >= 100 ? "full" : percent >= 80 ? "high" : "ok";
  $("usage-text").textContent = `${fmt.format(usage.tokens_used)} / ${fmt.format(usage.token_limit)} tokens today`;
  $("usage").title = `${fmt.format(usage.remaining)} tokens left; the oldest use leaves the 24-hour window within ${duration(usage.resets_in_seconds)}`;
}

// ---- conversations ---------------------------------------------------------------------------

async function loadConversations() {
  try {
    state.conversations = (await api("GET", "/conversations")).conversations;
    showError("list-error", null);
  } catch (err) {
    showError("list-error", err);
    return;
  }
  renderConversationList();
}

function renderConversationList() {
  const items = state.conversations.map((c) => {
    const current = state.current && state.current.id === c.id;
    const count = c.dataset_count === 1 ? "1 dataset" : `${c.dataset_count} datasets`;
    return el("li", { class: current ? "current" : "" },
      el("button", { type: "button", data: { id: c.id }, "aria-current": current ? "true" : undefined, onclick: () => openConversation(c.id) },
        el("span", { class: "title" }, c.title), el("span", { class: "meta" }, `${count} · ${when(c.updated_at)}`)));
  });
  $("conversation-list").replaceChildren(...items);
}

async function newConversation() {
  try {
    const made = await api("POST", "/conversations");
    await loadConversations();
    await openConversation(made.id);
  } catch (err) {
    showError("list-error", err);
  }
}

async function openConversation(id, { keepError = false, gap = false } = {}) {
  let conversation;
  try {
    conversation = await api("GET", `/conversations/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err.status === 404) { state.current = null; location.hash = ""; renderConversation(); await loadConversations(); }
    showError("conversation-error", err);
    return;
  }
  const switched = !state.current || state.current.id !== id;
  state.current = conversation;
  if (switched) state.turn = null;
  if (state.turn && conversation.messages.some((m) => m.id === state.turn.messageId)) state.turn = null;
  if (state.turn && gap) state.turn.gap = true; // tokens sent while the socket was down are missed
  if (switched) { showError("dataset-error", null); showError("sql-error", null); $("sql-result").replaceChildren(); }
  if (!keepError) showError("chat-error", null);
  showError("conversation-error", null);
  history.replaceState(null, "", `#c=${conversation.id}`);
  renderConversation();
  renderConversationList();
}

async function renameConversation(event) {
  event.preventDefault();
  try {
    const renamed = await api("PATCH", `/conversations/${state.current.id}`, { title: $("rename-input").value });
    state.current.title = renamed.title;
    $("rename-form").hidden = true;
    showError("conversation-error", null);
    renderConversation();
    await loadConversations();
  } catch (err) {
    showError("conversation-error", err);
  }
}

async function deleteConversation() {
  const id = state.current.id;
  $("delete-confirm").hidden = true;
  try {
    await api("DELETE", `/conversations/${id}`);
  } catch (err) {
    showError("conversation-error", err);
    return;
  }
  state.current = null;
  state.turn = null;
  history.replaceState(null, "", location.pathname);
  await loadConversations();
  if (state.conversations[0]) await openConversation(state.conversations[0].id);
  else renderConversation();
}

// ---- rendering a conversation ----------------------------------------------------------------

function renderConversation() {
  const c = state.current;
  $("empty-state").hidden = Boolean(c);
  $("conversation").hidden = !c;
  $("side-panel").hidden = !c;
  if (!c) return;
  $("conversation-title").textContent = c.title;
  renderMessages();
  renderDatasets();
}

function renderMessages() {
  const box = $("messages");
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const messages = state.current.messages;
  const latestSql = [...messages].reverse().find((m) => m.role === "assistant" && m.sql_query);
  const nodes = messages.map((m) => renderMessage(m, m === latestSql));
  if (messages.length === 0 && !state.turn) nodes.push(el("p", { class: "empty" }, "No messages yet. Add a dataset, then ask a question."));
  box.replaceChildren(...nodes);
  renderTurn();
  if (nearBottom) box.scrollTop = box.scrollHeight;
}

function renderMessage(m, runSql) {
  const node = el("article", { class: `message ${m.role}`, data: { id: m.id, role: m.role } },
    el("header", {}, el("span", { class: "who" }, m.role === "user" ? "You" : "chatdf"), el("time", {}, when(m.created_at))),
    m.content ? el("div", { class: "content" }, m.content) : el("div", { class: "content hint" }, "(no answer text: the answer ended early)"));
  if (m.sql_query) {
    const result = el("div", { class: "result" });
    node.append(el("details", { class: "sql", open: true }, el("summary", {}, "SQL"), el("pre", {}, el("code", {}, m.sql_query))), result);
    if (state.results.has(m.id)) showResult(result, state.results.get(m.id));
    else if (runSql) runMessageSql(m, result);
    else result.append(el("button", { type: "button", class: "quiet", onclick: () => runMessageSql(m, result) }, "Show the result table"));
  }
  return node;
}

function runMessageSql(message, box) {
  const conversationId = state.current.id;
  const running = api("POST", `/conversations/${conversationId}/query`, { sql: message.sql_query })
    .catch((err) => ({ error: err }));
  state.results.set(message.id, running); // a re-render meanwhile waits on the same run
  showResult(box, running);
  running.then((result) => state.results.set(message.id, result));
}

async function showResult(box, result) {
  if (result instanceof Promise) {
    box.replaceChildren(el("p", { class: "hint" }, "Running the SQL…"));
    result = await result;
  }
  renderResult(box, result);
}

function renderTurn() {
  const box = $("messages");
  box.querySelector("article.streaming")?.remove();
  const turn = state.turn;
  $("stop").hidden = !turn;
  $("send").disabled = Boolean(turn);
  if (!turn || !state.current || turn.conversationId !== state.current.id) return;
  box.querySelector("p.empty")?.remove();
  const phases = el("ol", { class: "phases" }, turn.phases.map((p) =>
    el("li", { data: { phase: p }, "aria-current": p === turn.phase ? "step" : undefined }, PHASES[p] || p)));
  const node = el("article", { class: "message assistant streaming", data: { role: "assistant" } },
    el("header", {}, el("span", { class: "who" }, "chatdf"), phases),
    turn.gap ? el("p", { class: "hint" }, "The connection was lost for a moment: part of this answer is missing here until it finishes.") : null,
    el("div", { class: "content" }, turn.text),
    el("span", { class: "cursor", "aria-hidden": "true" }));
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  box.append(node);
  if (nearBottom) box.scrollTop = box.scrollHeight;
}

function renderResult(box, result) {
  if (result.error) {
    box.replaceChildren();
    const p = el("p", { class: "error" });
    box.append(p);
    p.append(el("span", {}, result.error.message), result.error.details ? el("span", { class: "details" }, ` (${result.error.details})`) : "");
    return;
  }
  const head = el("tr", {}, result.columns.map((c) => el("th", { scope: "col" }, c)));
  const body = result.rows.map((row) => el("tr", {}, row.map((cell) =>
    el("td", { class: cell === null ? "null" : typeof cell === "number" ? "num" : "" }, cell === null ? "null" : typeof cell === "object" ? JSON.stringify(cell) : String(cell)))));
  const rows = result.total_rows === 1 ? "1 row" : `${fmt.format(result.total_rows)} rows`;
  const note = result.truncated ? `${rows}, first ${fmt.format(result.rows.length)} shown` : rows;
  box.replaceChildren(el("div", { class: "table-wrap" },
    el("table", { class: "result-table" }, el("caption", {}, `${note} · ${fmt.format(result.execution_ms)} ms`), el("thead", {}, head), el("tbody", {}, body))));
}

// ---- chat ------------------------------------------------------------------------------------

async function sendMessage(event) {
  event.preventDefault();
  const input = $("chat-input");
  const content = input.value;
  if (!content.trim() || !state.current) return;
  const conversationId = state.current.id;
  showError("chat-error", null);
  let answer;
  try {
    answer = await api("POST", `/conversations/${conversationId}/messages`, { content });
  } catch (err) {
    showError("chat-error", err);
    return;
  }
  input.value = "";
  if (!state.current || state.current.id !== conversationId) return;
  if (state.finished.has(answer.message_id)) { state.turn = null; return; } // already over
  state.current.messages.push({ id: `local-${answer.message_id}`, role: "user", content, sql_query: null, created_at: new Date().toISOString() });
  const turn = ensureTurn();
  turn.messageId = answer.message_id;
  renderMessages();
}

async function stopTurn() {
  try {
    await api("POST", `/conversations/${state.current.id}/stop`);
  } catch (err) {
    showError("chat-error", err);
    return;
  }
  state.turn = null;
  await openConversation(state.current.id);
}

// ---- datasets --------------------------------------------------------------------------------

function updateDataset(event) {
  const list = state.current.datasets;
  let row = list.find((d) => d.id === event.dataset_id);
  if (event.type === "dataset_loaded" && event.dataset) {
    if (row) Object.assign(row, event.dataset); else list.push(event.dataset);
  } else if (event.type === "dataset_loading") {
    if (!row) list.push({ id: event.dataset_id, url: event.url, name: "", status: "loading", schema: [] });
    else row.status = "loading";
  } else if (event.type === "dataset_error") {
    if (!row) { row = { id: event.dataset_id, url: "", name: "", schema: [] }; list.push(row); }
    row.status = "error";
    row.error = event.error;
  }
  renderDatasets();
}

function renderDatasets() {
  const items = state.current.datasets.map((d) => {
    const size = d.status === "ready" ? `${fmt.format(d.row_count)} rows × ${d.column_count} columns` : "";
    const schema = (d.schema || []).map((col) => el("tr", {}, el("td", {}, col.name), el("td", { class: "type" }, col.type)));
    return el("li", { class: `dataset ${d.status}`, data: { id: d.id, status: d.status } },
      el("div", { class: "dataset-head" },
        el("code", { class: "table-name" }, d.name || "…"),
        el("span", { class: `status ${d.status}` }, d.status),
        el("span", { class: "size" }, size)),
      el("div", { class: "url" }, d.url),
      d.status === "error" && d.error ? el("p", { class: "error" }, d.error) : null,
      schema.length ? el("details", { class: "schema", open: true }, el("summary", {}, "Schema"),
        el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "column"), el("th", {}, "type"))), el("tbody", {}, schema))) : null,
      el("div", { class: "dataset-actions" },
        el("button", { type: "button", class: "quiet", onclick: () => renameDataset(d) }, "Rename table"),
        el("button", { type: "button", class: "quiet", onclick: () => datasetAction("POST", d, "/refresh") }, "Refresh"),
        el("button", { type: "button", class: "quiet danger", onclick: () => datasetAction("DELETE", d, "") }, "Remove")));
  });
  if (!items.length) items.push(el("li", { class: "empty" }, "No dataset yet."));
  $("dataset-list").replaceChildren(...items);
}

async function addDataset(url) {
  showError("dataset-error", null);
  try {
    await api("POST", `/conversations/${state.current.id}/datasets`, { url });
  } catch (err) {
    showError("dataset-error", err);
    return false;
  }
  await openConversation(state.current.id, { keepError: true });
  return true;
}

function renameDataset(d) {
  const form = el("form", { class: "inline" },
    el("input", { type: "text", value: d.name, maxLength: 50, "aria-label": "Table name" }),
    el("button", { type: "submit" }, "Save"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("PATCH", `/conversations/${state.current.id}/datasets/${d.id}`, { table_name: form.elements[0].value });
    } catch (err) {
      showError("dataset-error", err);
      return;
    }
    showError("dataset-error", null);
    await openConversation(state.current.id, { keepError: true });
  });
  $("dataset-list").querySelector(`li[data-id="${CSS.escape(d.id)}"] .dataset-actions`).replaceChildren(form);
  form.elements[0].focus();
}

async function datasetAction(method, d, suffix) {
  showError("dataset-error", null);
  try {
    await api(method, `/conversations/${state.current.id}/datasets/${d.id}${suffix}`);
  } catch (err) {
    showError("dataset-error", err);
  }
  await openConversation(state.current.id, { keepError: true });
}

async function runOwnSql(event) {
  event.preventDefault();
  showError("sql-error", null);
  const box = $("sql-result");
  box.replaceChildren(el("p", { class: "hint" }, "Running…"));
  try {
    renderResult(box, await api("POST", `/conversations/${state.current.id}/query`, { sql: $("sql-input").value }));
  } catch (err) {
    box.replaceChildren();
    showError("sql-error", err);
  }
}

// ---- wiring ----------------------------------------------------------------------------------

function wireForms() {
  $("dev-form").addEventListener("submit", signInDev);
  $("google-signin").addEventListener("click", signInGoogle);
  $("signout").addEventListener("click", signOut);
  $("new-conversation").addEventListener("click", newConversation);
  $("rename-conversation").addEventListener("click", () => {
    $("rename-input").value = state.current.title;
    $("rename-form").hidden = false;
    $("rename-input").focus();
  });
  $("rename-cancel").addEventListener("click", () => { $("rename-form").hidden = true; });
  $("rename-form").addEventListener("submit", renameConversation);
  $("delete-conversation").addEventListener("click", () => { $("delete-confirm").hidden = false; });
  $("delete-no").addEventListener("click", () => { $("delete-confirm").hidden = true; });
  $("delete-yes").addEventListener("click", deleteConversation);
  $("chat-form").addEventListener("submit", sendMessage);
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("stop").addEventListener("click", stopTurn);
  $("dataset-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (await addDataset($("dataset-url").value)) $("dataset-url").value = "";
  });
  $("add-sample").addEventListener("click", () => addDataset(location.origin + SAMPLE_PATH));
  $("sql-form").addEventListener("submit", runOwnSql);
}

start();
