// The shared screen: the top features re-ranking live, totals, and the join QR code.
import { describeMoves, renderBoard, renderTotals } from "./board.js";
import { LiveStats, showConnection } from "./live.js";

const ROWS = 8;
const board = document.getElementById("board");
const template = document.getElementById("row-template");
const announce = document.getElementById("announce");
const conn = document.getElementById("conn");

function onStats(stats) {
  renderTotals(document, stats);
  const features = stats.top.slice(0, ROWS);
  document.getElementById("empty").hidden = features.length > 0;
  const sentence = describeMoves(renderBoard(board, template, features), features);
  if (sentence) announce.textContent = sentence;
}

new LiveStats({ onStats, onState: (state) => showConnection(conn, state) }).start();
