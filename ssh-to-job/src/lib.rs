//! The user's side of ssh-to-job: talking to the local schedd, and showing
//! jobs the way people read them.

pub mod jobs_view;
pub mod schedd_client;
