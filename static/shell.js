// The page shell on every page: an open navigation menu closes on Escape (focus back on it) or a click elsewhere.
const menus = [...document.querySelectorAll(".nav-menu")];

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  for (const menu of menus.filter((m) => m.open)) {
    menu.open = false;
    menu.querySelector("summary").focus();
  }
});
document.addEventListener("click", (event) => {
  for (const menu of menus) if (menu.open && !menu.contains(event.target)) menu.open = false;
});
