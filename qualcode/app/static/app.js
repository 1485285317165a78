// Keyboard first. Single theme: a number key picks that theme and saves, Enter saves the
// suggestion. Several themes: a number key picks or unpicks, Enter saves. Everywhere: 0 skips,
// u undoes, n goes to the note (Esc comes back).
document.addEventListener("keydown", (event) => {
  const form = document.getElementById("answer");
  if (!form || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && target.id === "note" && event.key === "Escape") {
    target.blur();
    return;
  }
  if (target && (target.tagName === "INPUT" && target.type !== "checkbox" || target.tagName === "SELECT" || target.tagName === "TEXTAREA")) return;
  if (event.key === "n") {
    event.preventDefault();
    document.getElementById("note").focus();
    return;
  }
  const multi = form.dataset.multi === "yes";
  if (event.key === "Enter" && !multi) {
    const suggested = form.querySelector('button[data-suggested="yes"]');
    if (suggested && !(target && target.tagName === "BUTTON")) {
      event.preventDefault();
      suggested.click();
    }
    return;
  }
  const control = form.querySelector(`[data-key="${event.key}"]`);
  if (!control) return;
  event.preventDefault();
  if (control.type === "checkbox") control.checked = !control.checked;
  else control.click();
});
// Running jobs: show their state until they end.
const jobs = document.querySelectorAll("[data-job]");
if (jobs.length) {
  const poll = async () => {
    const response = await fetch("/status", { credentials: "same-origin" });
    const state = await response.json();
    let running = false;
    for (const element of jobs) {
      const job = state[element.dataset.job];
      if (job) {
        const elapsed = job.elapsed === null ? "" : ` (${Math.round(job.elapsed)} s)`;
        element.textContent = `${job.state}${elapsed}: ${job.message}`;
        running = running || job.state === "running";
      }
    }
    if (running) setTimeout(poll, 1000);
  };
  poll();
}
// Sortable tables: click a header.
for (const table of document.querySelectorAll("table.sortable")) {
  table.querySelectorAll("th").forEach((th, column) => {
    th.tabIndex = 0;
    th.addEventListener("click", () => {
      const body = table.tBodies[0];
      const rows = [...body.rows];
      const up = th.dataset.order !== "up";
      rows.sort((a, b) => a.cells[column].textContent.localeCompare(b.cells[column].textContent, "sv") * (up ? 1 : -1));
      th.dataset.order = up ? "up" : "down";
      rows.forEach((row) => body.appendChild(row));
    });
  });
}
