// /new: one field, a title → POST /boards; the board's admin token is kept in this browser
// (per board) and its shared screen opens in presenter mode.
import { problem } from "./api.js";
import { keepToken } from "./admin.js";

const form = document.getElementById("new-board");
const title = form.elements.title;
const error = document.getElementById("title-error");
const formError = document.getElementById("form-error");

function show(fieldMessage, formMessage = "") {
  error.textContent = fieldMessage;
  formError.textContent = formMessage;
  if (fieldMessage) title.setAttribute("aria-invalid", "true");
  else title.removeAttribute("aria-invalid");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  show("");
  if (!title.value.trim()) { show("Give the board a title."); title.focus(); return; }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const res = await fetch("/boards", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ title: title.value }),
    });
    if (res.status === 201) {
      const { board, admin_token: token } = await res.json();
      keepToken(token, board.slug);
      document.getElementById("form-ok").textContent = `Created “${board.title}”; opening it…`;
      location.assign(`/b/${encodeURIComponent(board.slug)}/present`);
      return;
    }
    const p = await problem(res);
    const field = (p.errors || []).find((e) => e.loc === "$.title");
    if (field) show(field.msg);
    else if (res.status === 401 || res.status === 403) {
      show("", "Only a site admin may create boards on this server.");
    } else show("", p.detail || p.title || `The board was not created (${res.status}).`);
    title.focus();
  } catch (err) {
    show("", `Not sent: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});
