// The SlapOS master's panel: request forms generated from a software
// release's JSON schema (/api/schema) and usage charts (/api/usage, uPlot).
// Everything from the master is text: nodes are built with textContent,
// never innerHTML.
"use strict";
(function () {
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // -- forms from a JSON schema --------------------------------------------

  function kindOf(prop) {
    var t = Array.isArray(prop.type) ? prop.type.filter(function (x) { return x !== "null"; })[0] : prop.type;
    if (Array.isArray(prop.enum) && prop.enum.length) return "enum";
    if (t === "string" || t === "integer" || t === "number" || t === "boolean") return t;
    return "json";
  }

  function fieldFor(name, prop, required) {
    var kind = kindOf(prop);
    var wrap = el("label", { "class": "field", "data-name": name, "data-kind": kind });
    wrap.appendChild(document.createTextNode((prop.title || name) + (required ? " *" : "")));
    var input;
    if (kind === "enum") {
      input = el("select");
      if (!required) input.appendChild(el("option", { value: "" }, ""));
      prop.enum.forEach(function (v, i) { input.appendChild(el("option", { value: String(i) }, JSON.stringify(v).replace(/^"|"$/g, ""))); });
      var d = prop.enum.findIndex(function (v) { return JSON.stringify(v) === JSON.stringify(prop.default); });
      if (d >= 0) input.value = String(d);
    } else if (kind === "boolean") {
      input = el("input", { type: "checkbox" });
      input.checked = prop.default === true;
    } else if (kind === "json") {
      input = el("textarea", { rows: "3" });
      if (prop.default !== undefined) input.value = JSON.stringify(prop.default, null, 1);
    } else {
      input = el("input", { type: kind === "string" ? "text" : "number" });
      if (kind === "integer") input.setAttribute("step", "1");
      if (kind === "number") input.setAttribute("step", "any");
      if (prop.minimum !== undefined) input.setAttribute("min", prop.minimum);
      if (prop.maximum !== undefined) input.setAttribute("max", prop.maximum);
      if (prop.default !== undefined) input.value = String(prop.default);
    }
    input.name = "schema:" + name;
    wrap.appendChild(input);
    if (prop.description) wrap.appendChild(el("small", { "class": "desc" }, prop.description));
    wrap.appendChild(el("span", { "class": "field-error" }));
    return wrap;
  }

  // Renders the fields of `schema` (an object schema) into `box`.
  function renderSchemaForm(box, schema) {
    box.textContent = "";
    var props = (schema && schema.properties) || {};
    var required = (schema && schema.required) || [];
    Object.keys(props).forEach(function (name) {
      box.appendChild(fieldFor(name, props[name] || {}, required.indexOf(name) >= 0));
    });
    box.schema = schema;
    return Object.keys(props).length;
  }

  // The value of one generated field, or throws a message for people.
  function valueOf(field, prop, required) {
    var kind = field.getAttribute("data-kind");
    var input = field.querySelector("input, select, textarea");
    if (kind === "boolean") return input.checked;
    var raw = input.value;
    if (raw === "") {
      if (required) throw "required";
      return undefined;
    }
    if (kind === "enum") return prop.enum[Number(raw)];
    if (kind === "string") {
      if (prop.minLength !== undefined && raw.length < prop.minLength) throw "at least " + prop.minLength + " characters";
      if (prop.maxLength !== undefined && raw.length > prop.maxLength) throw "at most " + prop.maxLength + " characters";
      if (prop.pattern !== undefined && !new RegExp(prop.pattern).test(raw)) throw "does not match " + prop.pattern;
      return raw;
    }
    if (kind === "json") {
      try { return JSON.parse(raw); } catch (e) { throw "not JSON: " + e.message; }
    }
    var n = Number(raw);
    if (!isFinite(n)) throw "a number is needed";
    if (kind === "integer" && !Number.isInteger(n)) throw "an integer is needed";
    if (prop.minimum !== undefined && n < prop.minimum) throw "at least " + prop.minimum;
    if (prop.maximum !== undefined && n > prop.maximum) throw "at most " + prop.maximum;
    return n;
  }

  // Collects the generated fields: {ok, parameters, errors}.
  function collect(box) {
    var schema = box.schema || {};
    var props = schema.properties || {};
    var required = schema.required || [];
    var out = {}, errors = {};
    box.querySelectorAll(".field").forEach(function (field) {
      var name = field.getAttribute("data-name");
      var message = field.querySelector(".field-error");
      message.textContent = "";
      try {
        var v = valueOf(field, props[name] || {}, required.indexOf(name) >= 0);
        if (v !== undefined) out[name] = v;
      } catch (why) {
        errors[name] = String(why);
        message.textContent = String(why);
      }
    });
    return { ok: Object.keys(errors).length === 0, parameters: out, errors: errors };
  }

  function loadSchema(form) {
    var url = form.querySelector("#software_release").value.trim();
    var type = form.querySelector("#software_type").value.trim();
    var status = form.querySelector("#schema-status");
    var box = form.querySelector("#schema-fields");
    var label = form.querySelector("#parameters-label");
    box.textContent = ""; box.schema = null; label.hidden = false;
    if (!url) { status.textContent = ""; return Promise.resolve(); }
    var q = "software_release=" + encodeURIComponent(url) + (type ? "&software_type=" + encodeURIComponent(type) : "");
    return fetch("/api/schema?" + q).then(function (r) {
      if (!r.ok) throw new Error("no schema (" + r.status + ")");
      return r.json();
    }).then(function (doc) {
      var types = form.querySelector("#software-types");
      types.textContent = "";
      Object.keys(doc.software_types || {}).forEach(function (t) { types.appendChild(el("option", { value: t }, (doc.software_types[t] || {}).title || t)); });
      form.querySelector("#serialisation").value = doc.serialisation === "json-in-xml" ? "json-in-xml" : "xml";
      if (doc.parameters && typeof doc.parameters === "object") {
        var n = renderSchemaForm(box, doc.parameters);
        label.hidden = n > 0;
        status.textContent = n + " parameter(s) from the software release's schema";
      } else {
        status.textContent = "This software type has no parameter schema: parameters as JSON.";
      }
    }).catch(function (e) {
      status.textContent = "No schema for this software release (" + e.message + "): parameters as JSON.";
    });
  }

  function setupRequestForm(form) {
    var reload = function () { form.schemaLoaded = loadSchema(form); };
    form.querySelector("#software_release").addEventListener("change", reload);
    form.querySelector("#software_type").addEventListener("change", reload);
    // our messages first: a click comes before the browser's own checks
    form.querySelector("#request-submit").addEventListener("click", function (ev) {
      var box = form.querySelector("#schema-fields");
      if (box.schema && !collect(box).ok) ev.preventDefault();
    });
    form.addEventListener("submit", function (ev) {
      var box = form.querySelector("#schema-fields");
      if (!box.schema) return;
      var r = collect(box);
      if (!r.ok) { ev.preventDefault(); return; }
      form.querySelector("#parameters").value = JSON.stringify(r.parameters);
    });
    reload();
  }

  // -- usage charts ---------------------------------------------------------

  function chart(box, series) {
    var xs = series.points.map(function (p) { return p.start; });
    var ys = series.points.map(function (p) { return p.quantity; });
    if (xs.length === 1) {
      // one bucket alone: an hour either side, not uPlot's years
      xs = [xs[0] - 3600, xs[0], xs[0] + 3600];
      ys = [null, ys[0], null];
    }
    var holder = el("div", { "class": "chart" });
    box.appendChild(holder);
    var width = Math.max(200, Math.min(box.clientWidth || 320, 900));
    /* global uPlot */
    new uPlot({
      title: series.resource + (series.unit ? " (" + series.unit + ")" : ""),
      width: width, height: 160,
      series: [{}, { label: series.resource, stroke: "#1f5fbf", fill: "rgba(31,95,191,.1)" }],
    }, [xs, ys], holder);
  }

  function setupUsage(box) {
    fetch(box.getAttribute("data-usage")).then(function (r) {
      if (!r.ok) throw new Error(String(r.status));
      return r.json();
    }).then(function (doc) {
      box.textContent = "";
      var series = (doc.series || []).filter(function (s) { return (s.points || []).length; });
      if (!series.length) { box.appendChild(el("p", { "class": "muted" }, "No usage recorded yet.")); return; }
      series.forEach(function (s) { chart(box, s); });
    }).catch(function () {
      box.textContent = "";
      box.appendChild(el("p", { "class": "muted" }, "No usage recorded yet."));
    });
  }

  function setup() {
    var form = document.getElementById("request-form");
    if (form) setupRequestForm(form);
    document.querySelectorAll("[data-usage]").forEach(setupUsage);
  }

  window.slapPanel = { renderSchemaForm: renderSchemaForm, collect: collect, loadSchema: loadSchema };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup); else setup();
})();
