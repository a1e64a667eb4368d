// portrait gateway: progressive enhancement of the upload form (drop, preview, busy state).
// The form works without this file: it is a plain multipart POST that the browser submits itself.
"use strict";

(function () {
  function enhance(form) {
    const input = form.querySelector('input[type="file"]');
    const zone = form.querySelector("[data-dropzone]");
    const preview = form.querySelector("[data-preview]");
    const fileName = form.querySelector("[data-file-name]");
    const error = form.querySelector("[data-form-error]");
    const button = form.querySelector('button[type="submit"]');
    const busyNote = form.querySelector("[data-busy-note]");
    const accepted = (input.getAttribute("accept") || "").split(",").map((type) => type.trim()).filter(Boolean);

    function showError(message) {
      error.textContent = message;
      error.hidden = !message;
    }

    function acceptable(file) {
      // Some systems report no type for a file; the server decides then.
      return !file.type || accepted.length === 0 || accepted.includes(file.type);
    }

    function showFile(file) {
      showError("");
      preview.hidden = true;
      preview.removeAttribute("src");
      fileName.textContent = file ? file.name : "";
      if (!file) return;
      if (!acceptable(file)) {
        showError(`“${file.name}” is not a JPEG, PNG, WebP or BMP image.`);
        return;
      }
      // A data: URL, not a blob: one, so the Content-Security-Policy needs no extra image source.
      const reader = new FileReader();
      reader.addEventListener("load", () => {
        preview.src = reader.result;
        preview.alt = `Preview of ${file.name}`;
        preview.hidden = false;
      });
      reader.readAsDataURL(file);
    }

    function setBusy(busy) {
      form.classList.toggle("is-busy", busy);
      form.setAttribute("aria-busy", String(busy));
      button.disabled = busy;
      busyNote.textContent = busy ? "Finding the face, searching the gallery and drawing the anime portrait…" : "";
    }

    input.addEventListener("change", () => showFile(input.files[0]));

    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("is-dragging");
      });
    }
    for (const type of ["dragleave", "dragend", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("is-dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (!file) return;
      const files = new DataTransfer();
      files.items.add(file);
      input.files = files.files;
      showFile(file);
    });

    form.addEventListener("submit", (event) => {
      const file = input.files[0];
      if (!file) {
        event.preventDefault();
        showError("Choose a photo first.");
        return;
      }
      if (!acceptable(file)) {
        event.preventDefault();
        showError(`“${file.name}” is not a JPEG, PNG, WebP or BMP image.`);
        return;
      }
      // The browser submits the form itself and shows the answer: a result page or an error page.
      setBusy(true);
    });

    // Coming back to this page through the history cache must not leave it looking busy.
    window.addEventListener("pageshow", () => setBusy(false));
  }

  document.querySelectorAll("form[data-upload]").forEach(enhance);
})();
