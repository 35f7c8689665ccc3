import { defineProject } from "vitest/config"

// End-to-end tests run the production artefact: BuildArtefact builds dist/ once per run.
export default defineProject({ test: { globalSetup: ["test/support/BuildArtefact.ts"] } })
