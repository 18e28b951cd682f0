//! An agent's page: its certificate's expiry, then the event-driven families of
//! [`families::AGENT`] (sessions, tasks by state, engine errors).

use shoal_tls::Credentials;

use super::families;
use super::text::Text;

/// The whole page.
pub fn render(creds: &Credentials) -> String {
    let mut out = Text::new();
    super::manager::tls(&mut out, creds);
    for f in families::AGENT {
        f.encode(&mut out);
    }
    out.finish()
}
