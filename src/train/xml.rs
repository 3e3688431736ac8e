//! Just enough XML for PubMed: MEDLINE citation sets (title + abstract per article) and PMC
//! NXML full texts (title, abstract, body sections). A tag scanner rather than a full parser:
//! these files are machine-written and we only need element text.

/// Inner text spans of every `<tag ...>...</tag>` (not nested within itself).
fn elements<'a>(text: &'a str, tag: &str) -> Result<Vec<&'a str>, String> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        // `<tag>` or `<tag attr...>`, not `<tagOther>`.
        if !after.starts_with(['>', ' ', '\n', '\t', '\r', '/']) {
            rest = after;
            continue;
        }
        let gt = after.find('>').ok_or_else(|| format!("unterminated <{tag}> tag"))?;
        if after[..gt].ends_with('/') {
            rest = &after[gt + 1..];
            continue;
        }
        let body = &after[gt + 1..];
        let end = body.find(&close).ok_or_else(|| format!("<{tag}> is never closed"))?;
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    Ok(out)
}

fn decode_entity(e: &str) -> Option<char> {
    match e {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        _ => {
            let n = e.strip_prefix('#')?;
            let code = match n.strip_prefix(['x', 'X']) {
                Some(h) => u32::from_str_radix(h, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Element text without markup; paragraph-like closing tags become line breaks.
pub fn plain_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            let end = rest.find('>').map(|i| i + 1).unwrap_or(rest.len());
            let tag = &rest[..end];
            if [
                "</p>",
                "</title>",
                "</AbstractText>",
                "</sec>",
                "</ArticleTitle>",
                "<break/>",
            ]
            .iter()
            .any(|t| tag.starts_with(t))
            {
                out.push('\n');
            }
            rest = &rest[end..];
        } else if c == '&' {
            match rest.find(';').filter(|&i| i < 12) {
                Some(i) => {
                    match decode_entity(&rest[1..i]) {
                        Some(ch) => out.push(ch),
                        None => out.push_str(&rest[..=i]),
                    }
                    rest = &rest[i + 1..];
                }
                None => {
                    out.push('&');
                    rest = &rest[1..];
                }
            }
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    // Collapse runs of whitespace inside lines and drop empty lines.
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Documents in a MEDLINE/PubMed XML file (one per article with an abstract) or a PMC NXML
/// article (title, abstract and body as one document).
pub fn documents(text: &str) -> Result<Vec<String>, String> {
    let mut arts = elements(text, "PubmedArticle")?;
    if arts.is_empty() {
        arts = elements(text, "MedlineCitation")?;
    }
    if !arts.is_empty() {
        let mut docs = Vec::new();
        for a in arts {
            let abs = elements(a, "AbstractText")?;
            if abs.is_empty() {
                continue;
            }
            let mut d = String::new();
            if let Some(t) = elements(a, "ArticleTitle")?.first() {
                d.push_str(&plain_text(t));
                d.push('\n');
            }
            d.push_str(&abs.iter().map(|x| plain_text(x)).collect::<Vec<_>>().join("\n"));
            docs.push(d);
        }
        return Ok(docs);
    }
    let articles = elements(text, "article")?;
    if articles.is_empty() {
        return Err("neither PubMed articles (<PubmedArticle>) nor a PMC <article> found".into());
    }
    let mut docs = Vec::new();
    for a in articles {
        let mut parts = Vec::new();
        if let Some(t) = elements(a, "article-title")?.first() {
            parts.push(plain_text(t));
        }
        for ab in elements(a, "abstract")? {
            parts.push(plain_text(ab));
        }
        for b in elements(a, "body")? {
            parts.push(plain_text(b));
        }
        let d = parts.join("\n");
        if !d.trim().is_empty() {
            docs.push(d);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medline_title_and_abstract() {
        let x = r#"<PubmedArticleSet><PubmedArticle><MedlineCitation><Article><ArticleTitle>Aspirin &amp; pain.</ArticleTitle>
<Abstract><AbstractText Label="BACKGROUND">It <i>helps</i>.</AbstractText><AbstractText>Really &#x3b1;.</AbstractText></Abstract>
</Article></MedlineCitation></PubmedArticle><PubmedArticle><ArticleTitle>No abstract</ArticleTitle></PubmedArticle></PubmedArticleSet>"#;
        assert_eq!(documents(x).unwrap(), vec!["Aspirin & pain.\nIt helps.\nReally α."]);
    }

    #[test]
    fn pmc_sections() {
        let x = "<article><front><article-title>T</article-title><abstract><p>A b.</p></abstract></front>\
                 <body><sec><title>Intro</title><p>Text <xref>1</xref>.</p></sec></body><back><ref-list>R</ref-list></back></article>";
        assert_eq!(documents(x).unwrap(), vec!["T\nA b.\nIntro\nText 1."]);
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(documents("<PubmedArticle><AbstractText>x").is_err());
        assert!(documents("hello").is_err());
    }
}
