// Loaded before require.js and embed-amd.js (see _config.yml), and after Sphinx's MathJax settings.

// RequireJS takes a global `require` object defined before it loads as its configuration. Each of
// the widget manager's bundled modules finds its font files beside its own module path, so this one
// maps every module name to this script's folder, _static/widgets, where the fonts are, instead of
// under each page's own folder.
var widgetsFolder = document.currentScript.src.replace(/\/[^/]*$/, "");
var require = {paths: {"@jupyter-widgets/html-manager/dist": widgetsFolder}};
["base", "base7", "controls", "controls7", "html-manager"].forEach(function (name) {
  require.paths["@jupyter-widgets/" + name] = widgetsFolder + "/" + name;
});

// The widget manager typesets widget labels with MathJax 2's MathJax.Hub.Queue; the book runs
// MathJax 3, which has no Hub. Before MathJax 3 starts there is nothing to do (its first pass
// typesets the whole page); once it has started, typeset the widget's element.
window.MathJax = window.MathJax || {};
MathJax.Hub = {Queue: function () {}};
MathJax.startup = Object.assign({}, MathJax.startup, {
  ready: function () {
    MathJax.startup.defaultReady();
    MathJax.Hub = {Queue: function (job) { MathJax.typesetPromise([job[2]]); }};
  },
});
