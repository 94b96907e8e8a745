// The copy button of a new key's secret; everything else works without JavaScript.
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var field = document.getElementById(button.dataset.copy);
  var said = button.parentElement.querySelector(".copied");
  button.hidden = false;
  button.addEventListener("click", function () {
    field.select();
    var done = function () { if (said) { said.textContent = "Copied."; } };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });
});
