// First-start initialisation of the gary session database (run by the mongo image's entrypoint, mongosh).
// The store creates the same indexes itself on first use; creating them here means a fresh volume is fully indexed
// before gary connects. Names and options must match gary/sessions/mongo.py exactly, or createIndex conflicts.
const ttl = parseInt(process.env.SESSION_TTL_SECONDS || "604800", 10);
const gary = db.getSiblingDB(process.env.MONGODB_DB || "audio_generation_db");

gary.sessions.createIndex({ created_at: 1 }, { expireAfterSeconds: ttl });
gary.sessions.createIndex({ updated_at: 1 });
gary.sessions.createIndex({ model_name: 1 });

// GridFS: the driver's own indexes, plus what the store's sweep queries by (files expire with their session).
gary.fs.files.createIndex({ filename: 1, uploadDate: 1 });
gary.fs.chunks.createIndex({ files_id: 1, n: 1 }, { unique: true });
gary.fs.files.createIndex({ "metadata.session_id": 1 });
gary.fs.files.createIndex({ "metadata.session_created_at": 1 });
gary.fs.files.createIndex({ "metadata.pending": 1 }, { sparse: true });
