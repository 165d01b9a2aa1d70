// The reports page's Print button: shown only where a script can print (the page itself needs no JavaScript).
const button = document.getElementById("report-print");
if (button) {
  button.hidden = false;
  button.addEventListener("click", () => window.print());
}
