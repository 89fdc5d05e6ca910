//! Chat answers as Markdown, made safe to show: raw HTML in the text is shown as text, images
//! become their alt text (no request leaves for a model-chosen address), links keep only http(s)
//! and in-app addresses, and `[n]` markers become links to the cited passage in its document.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd, html};

/// Where citation `[n]` (1-based) points: the document view, at its passage.
pub fn citation_href(document_id: i64, passage_id: i64) -> String {
    format!("/documents/{document_id}#passage-{passage_id}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Splits `text` at `[n]` markers whose n has an address in `citations`.
fn cite(text: &str, citations: &[String]) -> Vec<Event<'static>> {
    let mut events = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        let closes = !digits.is_empty() && after[digits.len()..].starts_with(']');
        let target = digits.parse::<usize>().ok().filter(|n| closes && *n >= 1).and_then(|n| citations.get(n - 1));
        match target {
            Some(href) => {
                if open > 0 {
                    events.push(Event::Text(CowStr::from(rest[..open].to_owned())));
                }
                events.push(Event::InlineHtml(CowStr::from(format!(
                    "<a class=\"cite\" href=\"{}\" title=\"open the passage\">[{digits}]</a>",
                    escape(href)
                ))));
                rest = &after[digits.len() + 1..];
            }
            None => {
                events.push(Event::Text(CowStr::from(rest[..=open].to_owned())));
                rest = after;
            }
        }
    }
    if !rest.is_empty() {
        events.push(Event::Text(CowStr::from(rest.to_owned())));
    }
    events
}

fn safe_link(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("http://")
        || lower.starts_with("https://")
        || (lower.starts_with('/') && !lower.starts_with("//"))
}

/// `markdown` as HTML that is safe to set as an element's inner HTML; `citations[n - 1]` is where
/// marker `[n]` links.
pub fn render(markdown: &str, citations: &[String]) -> String {
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH);
    let mut events: Vec<Event<'_>> = Vec::new();
    let mut in_image = 0usize;
    // The parser cuts text at brackets: runs of text are joined before markers are looked for.
    let mut text = String::new();
    for event in parser {
        if let Event::Text(piece) = &event
            && in_image == 0
        {
            text.push_str(piece);
            continue;
        }
        if !text.is_empty() {
            events.extend(cite(&std::mem::take(&mut text), citations));
        }
        match event {
            Event::Html(raw) | Event::InlineHtml(raw) => events.push(Event::Text(CowStr::from(raw.to_string()))),
            Event::Start(Tag::Image { .. }) => in_image += 1,
            Event::End(TagEnd::Image) => in_image = in_image.saturating_sub(1),
            Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
                let dest_url = if safe_link(&dest_url) { dest_url } else { CowStr::from("#") };
                events.push(Event::Start(Tag::Link { link_type, dest_url, title, id }));
            }
            other => events.push(other),
        }
    }
    if !text.is_empty() {
        events.extend(cite(&text, citations));
    }
    let mut out = String::new();
    html::push_html(&mut out, events.into_iter());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_renders_code_and_lists_and_keeps_html_out() {
        let html = render("**Yes**: use `survfit`.\n\n```r\nfit <- survfit(x)\n```\n\n- one\n- two", &[]);
        assert!(html.contains("<strong>Yes</strong>") && html.contains("<code>survfit</code>"), "{html}");
        assert!(html.contains("<pre><code class=\"language-r\">fit &lt;- survfit(x)"), "{html}");
        assert!(html.contains("<li>one</li>"));
        let hostile = render(
            "<script>alert(1)</script>\n\nSee <img src=x onerror=alert(1)> ![t](http://evil/p.png) [a](javascript:alert(1))",
            &[],
        );
        assert!(!hostile.contains("<script") && !hostile.contains("<img"), "{hostile}");
        assert!(hostile.contains("&lt;script&gt;") && hostile.contains("href=\"#\""), "{hostile}");
    }

    #[test]
    fn citation_markers_link_to_their_passages() {
        let citations = vec![citation_href(3, 41), citation_href(3, 42)];
        let html = render("Use coxph [2], see [1] and [7] or [x].", &citations);
        assert!(html.contains("<a class=\"cite\" href=\"/documents/3#passage-42\""), "{html}");
        assert!(html.contains("href=\"/documents/3#passage-41\""), "{html}");
        assert!(html.contains("[7]") && html.contains("[x]"), "unknown markers stay text: {html}");
    }
}
