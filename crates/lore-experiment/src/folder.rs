//! The harness's types on a split folder (lore-io's format): a loaded folder as
//! [`ExperimentSets`], a [`Split`] written as the four sets, and its counts for split.json.

use std::path::Path;

use lore_io::{IoError, RowSource, SetRows, SplitFolder};
use serde_json::{json, Value};

use crate::sets::ExperimentSets;
use crate::split::Split;

impl<'a> ExperimentSets<'a> {
    /// The sets of a loaded split folder as the core's views; test users are matched to
    /// training users by id when both files have `user_ids`, else by index.
    pub fn from_folder(folder: &'a SplitFolder) -> lore_io::Result<Self> {
        let (seen_map, unseen_map) = folder.test_user_maps()?;
        Self::with_user_maps(
            folder.seen_train().view(),
            folder.seen_test().view(),
            seen_map,
            folder.unseen_train().view(),
            folder.unseen_test().view(),
            unseen_map,
        )
        .map_err(|cause| IoError::Core {
            path: folder.dir().to_path_buf(),
            cause,
        })
    }
}

impl Split {
    /// Writes the four sets into `dir`, each atomically, with the rows of `source`.
    /// `user_ids` names the source's users (written for the sets' users, so that matching
    /// goes by id).
    pub fn write_sets(
        &self,
        dir: &Path,
        source: &dyn RowSource,
        user_ids: Option<&[String]>,
    ) -> lore_io::Result<()> {
        for (name, set) in self.sets() {
            let owners = if name.starts_with("seen") {
                &self.seen_users
            } else {
                &self.unseen_users
            };
            let rows = SetRows {
                rows: &set.rows,
                users: &set.users,
                owners,
            };
            SplitFolder::write_set(dir, name, &rows, source, user_ids)?;
        }
        Ok(())
    }

    /// The counts of the split (users, dropped users, rows per set, prompts), for split.json.
    pub fn counts(&self) -> Value {
        let mut counts = json!({
            "seen_users": self.seen_users.len(),
            "unseen_users": self.unseen_users.len(),
            "dropped_users": self.dropped_users.len(),
            "rows": {
                "seen_train": self.seen_train.rows.len(),
                "seen_test": self.seen_test.rows.len(),
                "unseen_train": self.unseen_train.rows.len(),
                "unseen_test": self.unseen_test.rows.len(),
            },
        });
        if let Some((train, test)) = self.prompt_counts {
            counts["prompts"] = json!({ "train": train, "test": test });
        }
        counts
    }

    /// One line describing the split's sets, for summaries.
    pub fn describe(&self) -> String {
        format!(
            "{} seen users ({} training, {} test pairs), {} unseen users ({} few-shot, {} test \
             pairs){}",
            self.seen_users.len(),
            self.seen_train.rows.len(),
            self.seen_test.rows.len(),
            self.unseen_users.len(),
            self.unseen_train.rows.len(),
            self.unseen_test.rows.len(),
            match self.dropped_users.len() {
                0 => String::new(),
                n => format!(", {n} users dropped"),
            }
        )
    }
}
