// Progressive enhancement only: every page works without this file.
// SMTP page: choosing a security mode fills in its usual port when the port still holds
// another mode's preset.
document.addEventListener("DOMContentLoaded", function () {
  var security = document.getElementById("f-smtp_security");
  var port = document.getElementById("f-smtp_port");
  if (!security || !port) { return; }
  var presets = { plain: "25", starttls: "587", ssl: "465" };
  security.addEventListener("change", function () {
    var current = port.value.trim();
    var isPreset = current === "" || Object.keys(presets).some(function (k) { return presets[k] === current; });
    if (isPreset && presets[security.value]) { port.value = presets[security.value]; }
  });
});
