//! Plain-text tables for the human view of `node ls`, `service ls|ps`: left-aligned columns two
//! spaces apart, no trailing blanks. Empty cells are shown as `-` so that every row splits into
//! as many whitespace-separated fields as there are columns (the last one may hold spaces).

/// Renders `header` and `rows` (each as long as `header`).
pub(super) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |row: &[String], c: usize| -> String {
        match row.get(c).map(|t| t.trim()) {
            Some("") | None => "-".to_string(),
            Some(text) => text.replace(['\n', '\t', '\r'], " "),
        }
    };
    let cells: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(
            rows.iter()
                .map(|r| (0..header.len()).map(|c| cell(r, c)).collect()),
        )
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let lines: Vec<String> = cells
        .iter()
        .map(|r| {
            let padded: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(text, &w)| format!("{text:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_string()
        })
        .collect();
    lines.join("\n")
}

/// `k=v,k=v` (or empty).
pub(super) fn labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_empty_cells_show_a_dash() {
        let rows = vec![
            vec!["a".into(), "".into(), "first message".into()],
            vec!["longer".into(), "x".into(), "".into()],
        ];
        let text = render(&["ID", "NODE", "MESSAGE"], &rows);
        assert_eq!(
            text,
            "ID      NODE  MESSAGE\na       -     first message\nlonger  x     -"
        );
    }

    #[test]
    fn labels_are_comma_separated() {
        let map = std::collections::BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "".to_string()),
        ]);
        assert_eq!(labels(&map), "a=1,b=");
        assert_eq!(labels(&std::collections::BTreeMap::new()), "");
    }
}
