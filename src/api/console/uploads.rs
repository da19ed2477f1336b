//! Statement uploads on both consoles' reconciliation pages: the files read from the
//! multipart form, and the newest few kept so that "apply" runs on exactly what was reported.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::Multipart;

/// How many uploads are kept for "apply" (the newest).
const KEPT: usize = 8;

/// Uploaded statement files: (name, bytes).
pub type Files = Vec<(String, Vec<u8>)>;

/// Reads the form's non-empty `files` fields; the error says what the user should do.
pub async fn read_files(form: &mut Multipart) -> Result<Files, String> {
    let broke = |e: axum::extract::multipart::MultipartError| {
        format!("the upload broke off ({e}); try again")
    };
    let mut files = Vec::new();
    while let Some(field) = form.next_field().await.map_err(broke)? {
        if field.name() != Some("files") {
            continue;
        }
        let name = field.file_name().unwrap_or("statement.csv").to_string();
        let bytes = field.bytes().await.map_err(broke)?;
        if !bytes.is_empty() {
            files.push((name, bytes.to_vec()));
        }
    }
    Ok(files)
}

/// The uploads kept for "apply", newest last.
#[derive(Clone, Default)]
pub struct Uploads(Arc<Mutex<VecDeque<(String, Files)>>>);

impl Uploads {
    /// Keeps `files` (dropping the oldest beyond the bound) and returns the id "apply" names.
    pub fn keep(&self, files: Files) -> String {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.push_back((id.clone(), files));
        while kept.len() > KEPT {
            kept.pop_front();
        }
        id
    }

    /// The files kept under `id`, if still kept.
    pub fn get(&self, id: &str) -> Option<Files> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(kept, _)| kept == id)
            .map(|(_, files)| files.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_uploads_are_kept() {
        let u = Uploads::default();
        let first = u.keep(vec![("a.csv".into(), b"a".to_vec())]);
        assert_eq!(u.get(&first).unwrap()[0].0, "a.csv");
        let later: Vec<String> = (0..KEPT)
            .map(|i| u.keep(vec![(format!("{i}"), vec![])]))
            .collect();
        assert!(
            u.get(&first).is_none(),
            "the oldest is dropped past the bound"
        );
        assert!(later.iter().all(|id| u.get(id).is_some()));
        assert!(u.get("not-an-upload").is_none());
    }
}
