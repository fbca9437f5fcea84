//! The signing keys' lifecycle (JW-7): active, next and retired keys, rotation, and their file.

use super::*;

/// The lifecycle of the signing keys, persisted in one file.
pub(crate) struct JwtState {
    path: PathBuf,
    key_ttl: Duration,
    /// The kind of key new keys are (existing keys of another kind serve out their time).
    key_type: JwtKeyType,
    pub(super) active: Arc<JwtKey>,
    activated_at: SystemTime,
    next: Option<Arc<JwtKey>>,
    retired: Vec<(Arc<JwtKey>, SystemTime)>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    pkcs8: String,
    role: String,
    /// Seconds since the epoch: activation (active) or end of publication (retired).
    at: u64,
}

impl JwtState {
    /// Loads the keys from `dir/jwt.json`, creating the first key if there is none.
    pub(crate) fn load(
        dir: &Path,
        key_ttl: Duration,
        key_type: JwtKeyType,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let path = dir.join("jwt.json");
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        match crate::atomic_file::check_key_file(&path, true) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let stored: Vec<StoredKey> = match std::fs::read(&path) {
            Ok(data) => {
                let data = Zeroizing::new(data);
                serde_json::from_slice(&data).map_err(|e| Error::BadFile {
                    path: path.display().to_string(),
                    why: format!("not a lanyard JWT key file: {e}"),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(io(e)),
        };
        let mut active = None;
        let mut next = None;
        let mut retired = Vec::new();
        for k in stored {
            let der = Zeroizing::new(STANDARD.decode(&k.pkcs8).map_err(|e| Error::BadFile {
                path: path.display().to_string(),
                why: format!("key {}: {e}", k.kid),
            })?);
            let key = Arc::new(JwtKey::from_pkcs8(der.to_vec())?);
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(k.at);
            match k.role.as_str() {
                "active" => active = Some((key, at)),
                "next" => next = Some(key),
                _ => retired.push((key, at)),
            }
        }
        let created = active.is_none();
        let (active, activated_at) = match active {
            Some(a) => a,
            None => (Arc::new(JwtKey::generate_as(key_type)?), now),
        };
        let state = Self {
            path,
            key_ttl,
            key_type,
            active,
            activated_at,
            next,
            retired,
        };
        if created {
            state.persist()?;
            tracing::info!(kid = state.active.kid(), "created JWT signing key");
        }
        Ok(state)
    }

    /// Applies due transitions; true if the published set changed.
    pub(crate) fn tick(&mut self, now: SystemTime) -> Result<bool, Error> {
        let mut changed = false;
        let rotate_at = self.activated_at + self.key_ttl;
        // JW-7: publish the next key at least one maximum JWT lifetime before it signs.
        let publish_at = rotate_at - 2 * MAX_JWT_TTL;
        if self.next.is_none() && now >= publish_at {
            let next = Arc::new(JwtKey::generate_as(self.key_type)?);
            tracing::info!(
                kid = next.kid(),
                "prepared next JWT key; published before it signs"
            );
            self.next = Some(next);
            self.persist()?;
            changed = true;
        } else if let Some(next) = self.next.clone()
            && now >= rotate_at
        {
            // JW-7: the old key stays published until every token it signed has expired.
            let until = now + MAX_JWT_TTL + VALIDATION_LEEWAY;
            self.retired.push((self.active.clone(), until));
            tracing::info!(
                kid = next.kid(),
                old = self.active.kid(),
                "next JWT key now signs"
            );
            self.active = next;
            self.activated_at = now;
            self.next = None;
            self.persist()?;
            changed = true;
        }
        let before = self.retired.len();
        self.retired.retain(|(_, until)| *until > now);
        if self.retired.len() != before {
            self.persist()?;
            changed = true;
        }
        Ok(changed)
    }

    pub(crate) fn next_transition(&self) -> SystemTime {
        let rotate_at = self.activated_at + self.key_ttl;
        let mut t = match self.next {
            None => rotate_at - 2 * MAX_JWT_TTL,
            Some(_) => rotate_at,
        };
        for (_, until) in &self.retired {
            t = t.min(*until);
        }
        t
    }

    pub(crate) fn published(&self) -> JwtKeys {
        let mut keys = vec![self.active.clone()];
        keys.extend(self.next.iter().cloned());
        keys.extend(self.retired.iter().map(|(k, _)| k.clone()));
        JwtKeys::new(self.active.clone(), keys)
    }

    fn persist(&self) -> Result<(), Error> {
        let entry = |k: &JwtKey, role: &str, at: SystemTime| StoredKey {
            kid: k.kid.clone(),
            pkcs8: STANDARD.encode(&*k.pkcs8),
            role: role.into(),
            at: unix_seconds(at),
        };
        let mut stored = vec![entry(&self.active, "active", self.activated_at)];
        if let Some(n) = &self.next {
            stored.push(entry(n, "next", self.activated_at));
        }
        for (k, until) in &self.retired {
            stored.push(entry(k, "retired", *until));
        }
        let json = Zeroizing::new(serde_json::to_vec_pretty(&stored).unwrap_or_default());
        crate::atomic_file::write(&self.path, &json, 0o600).map_err(|source| Error::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}
