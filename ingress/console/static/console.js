// Switchboard console: small enhancements; every page works without this file.
"use strict";

// Copy buttons: <button data-copy="ELEMENT-ID"> copies that element's text.
function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  // http:// on another host than localhost has no clipboard API: a hidden textarea does.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  try { document.execCommand("copy"); } finally { area.remove(); }
  return Promise.resolve();
}

function wireCopyButtons(root) {
  root.querySelectorAll("[data-copy]").forEach((button) => {
    button.hidden = false;
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      copyText(source.textContent).then(() => {
        const label = button.textContent;
        button.textContent = "Copied";
        button.dataset.copied = "true";
        setTimeout(() => { button.textContent = label; }, 1500);
      });
    });
  });
}

// Tabs: a [data-tabs] element holding [data-tab-panel="Title"] sections becomes a tab list
// (without scripts every section shows, one after the other).
function wireTabs(root) {
  root.querySelectorAll("[data-tabs]").forEach((group) => {
    const panels = Array.from(group.querySelectorAll(":scope > [data-tab-panel]"));
    if (panels.length < 2) return;
    const list = document.createElement("div");
    list.className = "tabs";
    list.setAttribute("role", "tablist");
    const buttons = panels.map((panel, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("role", "tab");
      button.textContent = panel.dataset.tabPanel;
      button.id = (panel.id || "panel-" + index) + "-tab";
      panel.setAttribute("role", "tabpanel");
      panel.setAttribute("aria-labelledby", button.id);
      button.addEventListener("click", () => select(index));
      list.appendChild(button);
      return button;
    });
    function select(chosen) {
      panels.forEach((panel, index) => { panel.hidden = index !== chosen; });
      buttons.forEach((button, index) => { button.setAttribute("aria-selected", String(index === chosen)); });
    }
    group.insertBefore(list, panels[0]);
    group.querySelectorAll(":scope > [data-tab-panel] > .tab-title").forEach((title) => { title.hidden = true; });
    select(0);
  });
}

// <select data-autosubmit> submits its form on change (the form's button stays for no-JS).
function wireAutosubmit(root) {
  root.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form && select.form.submit());
  });
}

// <form data-confirm="Question?"> asks before a destructive post.
function wireConfirm(root) {
  root.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireCopyButtons(document);
  wireTabs(document);
  wireAutosubmit(document);
  wireConfirm(document);
});
