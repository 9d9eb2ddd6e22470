// Runs before the first paint (a classic script, not a module), so a chosen theme never flashes the other one.
// "light" or "dark" is the user's choice; nothing stored follows the system (prefers-color-scheme, in style.css).
try {
  const theme = localStorage.getItem("synatra.theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
} catch {
  // storage disabled: follow the system
}
