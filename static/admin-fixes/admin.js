// Accessibility mends for widgets Django admin builds in the browser (axe-core,
// tests/browser/test_accessibility.py). They run on what is there and on what the widgets add later.
"use strict";

function mend(root) {
  // SelectFilter2's help icons carry aria-label on a plain <span> (aria-prohibited-attr): name them as images.
  for (const icon of root.querySelectorAll(".help-tooltip[aria-label]:not([role])")) {
    icon.setAttribute("role", "img");
  }
  // Autocomplete (select2) comboboxes are named by their rendered value only, which is empty before a
  // choice (aria-input-field-name): name them by the field's label as well.
  for (const box of root.querySelectorAll(".select2-selection[role=combobox]")) {
    const select = box.closest(".select2-container")?.previousElementSibling;
    const label = select?.id && document.querySelector(`label[for="${CSS.escape(select.id)}"]`);
    if (!label) continue;
    label.id ||= `${select.id}-label`;
    const names = (box.getAttribute("aria-labelledby") || "").split(" ").filter(Boolean);
    if (!names.includes(label.id)) box.setAttribute("aria-labelledby", [label.id, ...names].join(" "));
    // ... and the read-only textbox inside it that shows the choice.
    const shown = box.querySelector("[role=textbox]:not([aria-labelledby])");
    if (shown) shown.setAttribute("aria-labelledby", `${label.id} ${shown.id}`.trim());
  }
}

mend(document);
new MutationObserver(() => mend(document)).observe(document.body, { childList: true, subtree: true });
