"""The page a served search pipeline shows at ``GET /``: type a query or drop an image, see the
ranked hits (thumbnails of stored photos when the server serves its files root). Plain HTML and
a few lines of JavaScript calling ``POST /run``; nothing is loaded from elsewhere.

>>> from embedflow.serve.protocol import Shape
>>> "<form" in page(Shape("t", True, ("query",), frozenset(), None, None, None, "text"), False)
True
"""

from __future__ import annotations

import html
import json

from .protocol import Shape

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem} form{display:flex;gap:.5rem;margin:1rem 0} input[type=text]{flex:1;padding:.5rem;font-size:1rem}
button{padding:.5rem 1rem} #drop{border:2px dashed #999;padding:1.5rem;text-align:center;margin:1rem 0}
#drop.over{background:#eef} ol{padding-left:1.5rem} li{margin:.6rem 0;display:flex;gap:.8rem;align-items:center}
li img{max-width:96px;max-height:96px} .score{font-family:monospace;color:#555} #error{color:#b00} pre{background:#f4f4f4;padding:1rem}
"""

_SCRIPT = """
const column = %(column)s, files = %(files)s;
const list = document.getElementById('hits'), err = document.getElementById('error');
function show(rows) {
  list.innerHTML = ''; err.textContent = '';
  const row = rows[0]; const hits = Object.values(row).find(v => Array.isArray(v) && v.length && v[0].distance !== undefined) || [];
  for (const hit of hits) {
    const li = document.createElement('li'); li.className = 'hit';
    const fields = Object.entries(hit).filter(([k]) => k !== 'id' && k !== 'distance');
    const path = (fields.find(([k]) => k === 'path') || [])[1];
    if (files && path) { const img = document.createElement('img'); img.src = '/files/' + encodeURI(path); li.appendChild(img); }
    const text = document.createElement('span');
    text.innerHTML = '<span class="score">' + hit.distance.toFixed(3) + '</span> ' + fields.map(([k, v]) => String(v)).join(' · ').replace(/[<>&]/g, c => ({'<':'&lt;','>':'&gt;','&':'&amp;'}[c]));
    li.appendChild(text); list.appendChild(li);
  }
}
async function post(body, headers) {
  const r = await fetch('/run', {method: 'POST', body, headers});
  const data = await r.json();
  if (!r.ok) { err.textContent = data.error.message; list.innerHTML = ''; return; }
  show(data.rows);
}
"""

_TEXT = """
<form id="search"><input type="text" id="query" name="query" placeholder="type a query" autofocus><button>Search</button></form>
<p id="error"></p><ol id="hits"></ol>
<script>%(script)s
document.getElementById('search').addEventListener('submit', e => { e.preventDefault();
  post(JSON.stringify({rows: [{[column]: document.getElementById('query').value}]}), {'Content-Type': 'application/json'}); });
</script>"""

_IMAGE = """
<div id="drop">drop an image here, or <input type="file" id="file" accept="image/*"></div>
<p id="error"></p><ol id="hits"></ol>
<script>%(script)s
function send(file) { const form = new FormData(); form.append(column, file); post(form, {}); }
const drop = document.getElementById('drop');
document.getElementById('file').addEventListener('change', e => send(e.target.files[0]));
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over'); send(e.dataTransfer.files[0]); });
</script>"""


def page(shape: Shape, serves_files: bool) -> str:
    """The HTML of ``GET /`` for ``shape``."""
    title = html.escape(shape.name)
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><link rel='icon' href='data:,'><style>{_STYLE}</style></head><body><h1>{title}</h1>"
    if shape.search is None:
        example = json.dumps({"rows": [dict.fromkeys(shape.inputs or ("value",), "...")]})
        return (
            head + "<p>This server runs a pipeline on the rows you send.</p>"
            f"<pre>POST /run  {html.escape(example)}</pre>"
            + ('<pre>POST /v1/embeddings  {"input": ["a text"]}</pre>' if shape.text_input else "")
            + "<p><a href='/docs'>API documentation</a> · <a href='/health'>health</a> · <a href='/metrics'>metrics</a></p></body></html>"
        )
    column = (shape.inputs or ("query",))[0]
    script = _SCRIPT % {"column": json.dumps(column), "files": json.dumps(serves_files)}
    body = (_IMAGE if shape.search == "image" else _TEXT) % {"script": script}
    return head + body + "</body></html>"
