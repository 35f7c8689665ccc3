console.log("sleeve")
